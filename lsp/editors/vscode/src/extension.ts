// phi-tui for VS Code: starts `phi-tui lsp` for Python files. vscode-languageclient 10+ implements LSP 3.18's
// `textDocument/inlineCompletion`, so the server's suggestions show as inline ghost text with no code here; VS Code
// cancels a request when the user types on, the client sends `$/cancelRequest`, and the server stops the model.

import * as vscode from 'vscode';
import { LanguageClient, LanguageClientOptions, ServerOptions } from 'vscode-languageclient/node';

const SECTION = 'phi-tui';

let client: LanguageClient | undefined;

/// The settings the server reads, as initializationOptions and in workspace/didChangeConfiguration.
function serverSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION);
  return {
    model: config.get<string>('model', ''),
    maxTokens: config.get<number>('maxTokens', 64),
    maxLineTokens: config.get<number>('maxLineTokens', 32),
    mode: config.get<string>('mode', 'multiLine'),
    debounceMs: config.get<number>('debounceMs', 150),
    openFilesContext: config.get<boolean>('openFilesContext', false),
  };
}

async function startClient(): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const serverOptions: ServerOptions = {
    command: config.get<string>('path', 'phi-tui'),
    args: config.get<string[]>('args', ['lsp']),
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: 'file', language: 'python' },
      { scheme: 'untitled', language: 'python' },
    ],
    initializationOptions: serverSettings(),
    outputChannelName: 'phi-tui',
    middleware: {
      // Popup items repeat the ghost text's first line; they are off unless asked for.
      provideCompletionItem: (document, position, context, token, next) =>
        vscode.workspace.getConfiguration(SECTION).get<boolean>('completionItems', false)
          ? next(document, position, context, token)
          : undefined,
    },
  };
  client = new LanguageClient('phi-tui', 'phi-tui', serverOptions, clientOptions);
  await client.start();
}

async function stopClient(): Promise<void> {
  const running = client;
  client = undefined;
  if (running) {
    await running.stop();
  }
}

async function restartClient(): Promise<void> {
  await stopClient();
  try {
    await startClient();
  } catch (error) {
    void vscode.window.showErrorMessage(
      `phi-tui: could not start the language server (${String(error)}). Set "phi-tui.path" to the phi-tui binary.`,
    );
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  context.subscriptions.push(
    vscode.commands.registerCommand('phi-tui.restart', restartClient),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      if (!client || event.affectsConfiguration(`${SECTION}.path`) || event.affectsConfiguration(`${SECTION}.args`)) {
        await restartClient();
        return;
      }
      await client.sendNotification('workspace/didChangeConfiguration', { settings: { [SECTION]: serverSettings() } });
    }),
  );
  await restartClient();
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
