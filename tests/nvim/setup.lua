-- Loads lsp/editors/nvim/phi-tui.lua as a user's init.lua would and calls setup(); records what it said.
-- Uses nothing newer than Neovim 0.7, so that it shows what the config says on old versions.
-- Environment: CONFIG_DIR (lsp/editors/nvim), CMD (the server's program), OUT.
local env = os.getenv
package.path = env('CONFIG_DIR') .. '/?.lua;' .. package.path

local messages = {}
vim.notify = function(message, level)
  messages[#messages + 1] = { message = message, level = level }
end

local ok, started = pcall(function()
  return require('phi-tui').setup({ cmd = { env('CMD'), 'lsp' } })
end)
local file = assert(io.open(env('OUT'), 'w'))
file:write(vim.fn.json_encode({ ok = ok, started = started, messages = messages }))
file:close()
vim.cmd('qa!')
