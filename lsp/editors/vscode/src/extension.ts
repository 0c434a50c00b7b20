// phi-tui for VS Code: starts `phi-tui lsp` for Python files. vscode-languageclient 10+ implements LSP 3.18's
// `textDocument/inlineCompletion`, so the server's suggestions show as inline ghost text; VS Code cancels a request
// when the user types on, the client sends `$/cancelRequest`, and the server stops the model.
//
// Around that: a status-bar item (the model, the last completion's latency, a click turns completions off and on),
// "phi-tui: Restart the language server", and a missing binary reported with the setting that fixes it.

import * as os from 'node:os';
import * as vscode from 'vscode';
import { LanguageClient, LanguageClientOptions, ServerOptions } from 'vscode-languageclient/node';

import { findExecutable, missingBinaryMessage } from './binary';
import { modelName, ServerState, statusView } from './status';

const SECTION = 'phi-tui';
/// phi-tui's own request: `{ model: { name, path } | null }` (lsp/src/server.rs, STATUS_METHOD).
const STATUS_REQUEST = 'phi-tui/status';

let client: LanguageClient | undefined;
let state: ServerState = { kind: 'stopped' };
let statusItem: vscode.StatusBarItem | undefined;

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function enabled(): boolean {
  return config().get<boolean>('enabled', true);
}

function setState(next: ServerState): void {
  state = next;
  if (!statusItem) {
    return;
  }
  const view = statusView(state, enabled());
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor = view.error ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  statusItem.command = view.error ? 'phi-tui.restart' : 'phi-tui.toggle';
  statusItem.show();
}

/// The settings the server reads, as initializationOptions and in workspace/didChangeConfiguration.
function serverSettings(): Record<string, unknown> {
  const settings = config();
  return {
    model: settings.get<string>('model', ''),
    maxTokens: settings.get<number>('maxTokens', 64),
    maxLineTokens: settings.get<number>('maxLineTokens', 32),
    mode: settings.get<string>('mode', 'multiLine'),
    debounceMs: settings.get<number>('debounceMs', 150),
    openFilesContext: settings.get<boolean>('openFilesContext', false),
  };
}

/// Asks the server which model completions come from (it answers once a load in progress has finished).
async function refreshModel(): Promise<void> {
  const running = client;
  if (!running) {
    return;
  }
  try {
    const status = await running.sendRequest<{ model: { name: string } | null }>(STATUS_REQUEST);
    if (client === running && state.kind === 'running') {
      setState({ ...state, model: modelName(status.model?.name) });
    }
  } catch {
    // An older server without the request, or one that stopped: the status bar keeps what it had.
  }
}

/// Times a completion from the request to its answer, for the status bar.
function recordLatency(started: number, items: unknown): void {
  const count = Array.isArray(items) ? items.length : ((items as { items?: unknown[] } | null)?.items?.length ?? 0);
  if (count > 0 && state.kind === 'running') {
    setState({ ...state, lastLatencyMs: performance.now() - started });
    void refreshModel();
  }
}

async function startClient(): Promise<void> {
  const command = config().get<string>('path', 'phi-tui');
  const binary = findExecutable(command, process.env.PATH, os.homedir());
  if (!binary) {
    setState({ kind: 'missingBinary', command });
    const choice = await vscode.window.showErrorMessage(missingBinaryMessage(command), 'Open Settings');
    if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', `${SECTION}.path`);
    }
    return;
  }
  const serverOptions: ServerOptions = { command: binary, args: config().get<string[]>('args', ['lsp']) };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: 'file', language: 'python' },
      { scheme: 'untitled', language: 'python' },
    ],
    initializationOptions: serverSettings(),
    outputChannelName: 'phi-tui',
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!enabled()) {
          return undefined;
        }
        const started = performance.now();
        const items = await next(document, position, context, token);
        if (!token.isCancellationRequested) {
          recordLatency(started, items);
        }
        return items;
      },
      // Popup items repeat the ghost text's first line; they are off unless asked for.
      provideCompletionItem: (document, position, context, token, next) =>
        enabled() && config().get<boolean>('completionItems', false)
          ? next(document, position, context, token)
          : undefined,
    },
  };
  setState({ kind: 'starting' });
  const starting = new LanguageClient('phi-tui', 'phi-tui', serverOptions, clientOptions);
  client = starting;
  await starting.start();
  if (client === starting) {
    setState({ kind: 'running', model: null, lastLatencyMs: null });
    void refreshModel();
  }
}

async function stopClient(): Promise<void> {
  const running = client;
  client = undefined;
  setState({ kind: 'stopped' });
  if (running) {
    await running.stop();
  }
}

async function restartClient(): Promise<void> {
  await stopClient();
  try {
    await startClient();
  } catch (error) {
    client = undefined;
    setState({ kind: 'failed', error: String(error) });
    void vscode.window.showErrorMessage(
      `phi-tui: could not start the language server (${String(error)}). Check "phi-tui.path" and "phi-tui.args".`,
    );
  }
}

async function toggle(): Promise<void> {
  // Global: a click means "for me", not "for this workspace's settings file".
  await config().update('enabled', !enabled(), vscode.ConfigurationTarget.Global);
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  statusItem = vscode.window.createStatusBarItem('phi-tui.status', vscode.StatusBarAlignment.Right, 100);
  statusItem.name = 'phi-tui';
  context.subscriptions.push(
    statusItem,
    vscode.commands.registerCommand('phi-tui.restart', restartClient),
    vscode.commands.registerCommand('phi-tui.toggle', toggle),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      setState(state); // `enabled` may have changed
      if (!client || event.affectsConfiguration(`${SECTION}.path`) || event.affectsConfiguration(`${SECTION}.args`)) {
        await restartClient();
        return;
      }
      await client.sendNotification('workspace/didChangeConfiguration', { settings: { [SECTION]: serverSettings() } });
      if (event.affectsConfiguration(`${SECTION}.model`)) {
        void refreshModel();
      }
    }),
  );
  await restartClient();
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
