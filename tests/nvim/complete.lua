-- Drives a real Neovim LSP client against `phi-tui lsp` (tests/nvim.rs runs this headless).
-- Works with Neovim 0.7 (Debian 12's) and later: only vim.lsp.start_client and buf_request_sync.
-- Environment: PHI_TUI_BIN, MODEL, FILE (a Python file), LINE/COL (1-based line, 0-based byte column), OUT, LOG.
local env = os.getenv

local function finish(value)
  local file = assert(io.open(env('OUT'), 'w'))
  file:write(vim.fn.json_encode(value))
  file:close()
  vim.cmd('qa!')
end

local client_id = vim.lsp.start_client({
  name = 'phi-tui',
  cmd = { env('PHI_TUI_BIN'), 'lsp', '-m', env('MODEL'), '--log-file', env('LOG'), '--threads', '2' },
  root_dir = vim.fn.fnamemodify(env('FILE'), ':h'),
  init_options = { debounceMs = 0, maxTokens = 24 },
})
if not client_id then
  finish({ error = 'the client did not start' })
  return
end

vim.cmd('edit ' .. env('FILE'))
vim.bo.filetype = 'python' -- started with -u NONE: no filetype detection
vim.lsp.buf_attach_client(0, client_id)
local initialized = vim.wait(60000, function()
  local client = vim.lsp.get_client_by_id(client_id)
  return client ~= nil and client.initialized
end, 20)
if not initialized then
  finish({ error = 'the server did not initialize' })
  return
end

vim.api.nvim_win_set_cursor(0, { tonumber(env('LINE')), tonumber(env('COL')) })
local params = vim.lsp.util.make_position_params()
local responses = vim.lsp.buf_request_sync(0, 'textDocument/completion', params, 60000)
local client = vim.lsp.get_client_by_id(client_id)
finish({
  server = client and client.name,
  capabilities = client and client.server_capabilities,
  responses = responses,
})
