-- A real Neovim 0.10+ set up with lsp/editors/nvim/phi-tui.lua as a user would (tests/nvim.rs runs it headless):
-- opens a Python file, types at the end of its last line, waits for phi-tui's suggestion in the popup menu, and
-- records the line as typed (nothing may have been inserted for the user), the menu, and the line after <C-n>
-- picks the item.
-- Environment: CONFIG_DIR (lsp/editors/nvim), PHI_TUI_BIN, MODEL, FILE, LOG, TYPE (the keys typed), OUT.
local env = os.getenv
package.path = env('CONFIG_DIR') .. '/?.lua;' .. package.path

local result = { messages = {} }
vim.notify = function(message, level)
  table.insert(result.messages, { message = message, level = level })
end

local function finish(fields)
  for key, value in pairs(fields) do
    result[key] = value
  end
  local file = assert(io.open(env('OUT'), 'w'))
  file:write(vim.fn.json_encode(result))
  file:close()
  vim.cmd('qa!')
end

--- Calls on_ready once condition() holds, polling from the event loop (typed keys are only processed there, so
--- the script must not block); gives up after timeout_ms.
local function wait_for(what, timeout_ms, condition, on_ready)
  local deadline = vim.uv.hrtime() + timeout_ms * 1e6
  local timer = vim.uv.new_timer()
  timer:start(0, 20, vim.schedule_wrap(function()
    if timer:is_closing() then
      return
    end
    if condition() then
      timer:close()
      on_ready()
    elseif vim.uv.hrtime() > deadline then
      timer:close()
      finish({ error = 'timed out waiting for ' .. what })
    end
  end))
end

local started = require('phi-tui').setup({
  cmd = { env('PHI_TUI_BIN'), 'lsp', '-m', env('MODEL'), '--log-file', env('LOG'), '--threads', '2' },
  debounce_ms = 0,
  max_line_tokens = 8,
})
if not started then
  finish({ error = 'setup() refused to start' })
  return
end

vim.cmd('edit ' .. vim.fn.fnameescape(env('FILE')))
vim.bo.filetype = 'python' -- started with -u NONE: no filetype detection
local bufnr = vim.api.nvim_get_current_buf()

wait_for('the server to attach', 60000, function()
  -- on_attach has run once the buffer's completeopt is the config's.
  return vim.lsp.get_clients({ bufnr = bufnr, name = 'phi-tui' })[1] ~= nil
    and vim.o.completeopt:find('noselect') ~= nil
end, function()
  result.completeopt = vim.o.completeopt
  vim.api.nvim_win_set_cursor(0, { vim.api.nvim_buf_line_count(bufnr), 0 })
  local line = vim.api.nvim_get_current_line()
  -- 0.11+ asks on every character (autotrigger); 0.10 through omnifunc.
  vim.api.nvim_input('A' .. env('TYPE') .. (vim.lsp.completion and '' or '<C-x><C-o>'))
  -- The menu, or else the line changing beyond what was typed (an item inserted by itself) ends the wait.
  wait_for('the popup menu', 60000, function()
    local now = vim.api.nvim_get_current_line()
    return vim.fn.pumvisible() == 1 or (now ~= line and now ~= line .. env('TYPE'))
  end, function()
    local info = vim.fn.complete_info({ 'items', 'selected' })
    local typed_line = vim.api.nvim_get_current_line()
    vim.api.nvim_input('<C-n>')
    wait_for('<C-n> to insert the item', 10000, function()
      return vim.api.nvim_get_current_line() ~= typed_line
    end, function()
      finish({
        typed_line = typed_line,
        items = info.items,
        selected = info.selected,
        accepted_line = vim.api.nvim_get_current_line(),
      })
    end)
  end)
end)
