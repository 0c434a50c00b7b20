// What the status-bar item says, as data: kept apart from the VS Code API so that it is tested with plain Node.

export type ServerState =
  | { kind: 'starting' }
  | { kind: 'running'; model: string | null; lastLatencyMs: number | null }
  | { kind: 'missingBinary'; command: string }
  | { kind: 'failed'; error: string }
  | { kind: 'stopped' };

export interface StatusView {
  text: string;
  tooltip: string;
  /// Draw it as an error (the status bar's error colours).
  error: boolean;
}

/// The status-bar item for `state`, with completions turned on or off (a click toggles them).
export function statusView(state: ServerState, enabled: boolean): StatusView {
  const toggle = enabled ? 'Click to turn phi-tui completions off.' : 'Click to turn phi-tui completions on.';
  switch (state.kind) {
    case 'starting':
      return { text: '$(sync~spin) phi-tui', tooltip: `phi-tui: starting the language server. ${toggle}`, error: false };
    case 'missingBinary':
      return {
        text: '$(error) phi-tui',
        tooltip: `phi-tui: "${state.command}" is not an executable program. Set "phi-tui.path", then run "phi-tui: Restart the language server".`,
        error: true,
      };
    case 'failed':
      return { text: '$(error) phi-tui', tooltip: `phi-tui: ${state.error}`, error: true };
    case 'stopped':
      return { text: '$(circle-slash) phi-tui', tooltip: 'phi-tui: the language server is stopped.', error: false };
    case 'running': {
      if (!enabled) {
        return { text: '$(circle-slash) phi-tui off', tooltip: `phi-tui: completions are off. ${toggle}`, error: false };
      }
      const model = state.model ?? 'no model';
      const latency = state.lastLatencyMs === null ? '' : ` · ${formatLatency(state.lastLatencyMs)}`;
      const lastLine =
        state.lastLatencyMs === null
          ? 'No completion yet.'
          : `The last completion took ${formatLatency(state.lastLatencyMs)}, from the request to the answer.`;
      const modelLine = state.model === null ? 'No model: set "phi-tui.model".' : `Model: ${state.model}.`;
      return { text: `$(sparkle) ${model}${latency}`, tooltip: `phi-tui: ${modelLine} ${lastLine} ${toggle}`, error: false };
    }
  }
}

export function formatLatency(ms: number): string {
  return ms < 10_000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/// The model's display name: its file name without `.gguf`.
export function modelName(name: string | null | undefined): string | null {
  if (!name) {
    return null;
  }
  const base = name.split(/[\\/]/).pop() ?? name;
  return base.replace(/\.gguf$/i, '');
}
