// `npm test`: the extension's logic that needs no VS Code (run with Node's test runner on tsc's output).

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';

import { findExecutable, missingBinaryMessage } from '../binary';
import { formatLatency, modelName, statusView } from '../status';

test('the status bar shows the model and the last latency, and says when completions are off', () => {
  const running = { kind: 'running' as const, model: 'phi-1.Q8_0', lastLatencyMs: 41.6 };
  assert.equal(statusView(running, true).text, '$(sparkle) phi-1.Q8_0 · 42 ms');
  assert.match(statusView(running, true).tooltip, /Click to turn phi-tui completions off/);
  assert.equal(statusView({ ...running, lastLatencyMs: null }, true).text, '$(sparkle) phi-1.Q8_0');
  assert.equal(statusView({ ...running, model: null }, true).text, '$(sparkle) no model · 42 ms');
  assert.equal(statusView(running, false).text, '$(circle-slash) phi-tui off');
  const missing = statusView({ kind: 'missingBinary', command: 'phi-tui' }, true);
  assert.equal(missing.error, true);
  assert.match(missing.tooltip, /"phi-tui.path"/);
  assert.equal(formatLatency(12_345), '12.3 s');
  assert.equal(modelName('/models/phi-1.Q8_0.gguf'), 'phi-1.Q8_0');
  assert.equal(modelName(null), null);
});

test('the binary is found on PATH, as a path, or reported with the setting to fix', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phi-tui-ext-'));
  const binary = path.join(dir, 'phi-tui');
  fs.writeFileSync(binary, '#!/bin/sh\n');
  fs.chmodSync(binary, 0o755);
  const notExecutable = path.join(dir, 'plain');
  fs.writeFileSync(notExecutable, '');

  const pathVariable = ['/nonexistent', dir].join(path.delimiter);
  assert.equal(findExecutable('phi-tui', pathVariable, '/home/user'), binary);
  assert.equal(findExecutable('phi-tui', '/nonexistent', '/home/user'), undefined);
  assert.equal(findExecutable(binary, undefined, '/home/user'), binary);
  assert.equal(findExecutable('~/phi-tui', undefined, dir), binary);
  assert.equal(findExecutable('./phi-tui', undefined, '/home/user', dir), binary);
  assert.equal(findExecutable(notExecutable, undefined, '/home/user'), undefined);
  assert.equal(findExecutable('plain', dir, '/home/user'), undefined);
  assert.equal(findExecutable(dir, undefined, '/home/user'), undefined, 'a directory is not a program');
  assert.match(missingBinaryMessage('phi-tui'), /Set "phi-tui.path"/);
  fs.rmSync(dir, { recursive: true });
});
