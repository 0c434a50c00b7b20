// Finding the phi-tui binary before starting it: vscode-languageclient only reports "spawn phi-tui ENOENT" in its
// output channel, which nobody opens, so the extension looks first and says which setting fixes it.

import * as fs from 'node:fs';
import * as path from 'node:path';

/// The executable file `command` names: a path (absolute, `~/`, or relative to `cwd`), or a name looked up in
/// `pathVariable` (PATH's value). `undefined` when there is none.
export function findExecutable(
  command: string,
  pathVariable: string | undefined,
  home: string,
  cwd: string = process.cwd(),
): string | undefined {
  if (command === '') {
    return undefined;
  }
  const expanded = command === '~' || command.startsWith('~/') ? path.join(home, command.slice(1)) : command;
  if (expanded.includes(path.sep) || expanded.includes('/')) {
    const file = path.resolve(cwd, expanded);
    return isExecutable(file) ? file : undefined;
  }
  for (const dir of (pathVariable ?? '').split(path.delimiter)) {
    if (dir === '') {
      continue;
    }
    const file = path.join(dir, expanded);
    if (isExecutable(file)) {
      return file;
    }
  }
  return undefined;
}

function isExecutable(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) {
      return false;
    }
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/// What to tell the user when `command` cannot be run, naming the setting that fixes it.
export function missingBinaryMessage(command: string): string {
  return (
    `phi-tui: "${command}" is not an executable program, so there are no completions. ` +
    'Set "phi-tui.path" to the phi-tui binary, or put phi-tui on your PATH ' +
    '(`cargo install --path .` in the phi-tui repository) and restart VS Code.'
  );
}
