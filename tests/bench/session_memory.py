#!/usr/bin/env python3
"""Memory of the shared session against a standalone process (a benchmark, not a test; see session-bench.sh).

    session_memory.py PHI_TUI_BIN MODEL.gguf WORK_DIR [THREADS]

Measures proportional set size (PSS, /proc/PID/smaps_rollup: shared pages such as the memory-mapped model are split
among the processes that map them, so the sum over processes is the real total) of
  1. one standalone `phi-tui lsp --standalone` that has answered a completion, and
  2. the daemon + a TUI (in tmux, after one chat reply) + two `phi-tui lsp` editors (after one completion each),
and prints both, their ratio, and each process's share.
"""
import json
import os
import shutil
import subprocess
import sys
import time

BIN, MODEL, WORK = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
THREADS = sys.argv[4] if len(sys.argv) > 4 else "2"
SOURCE = "import os\n\n\ndef list_python_files(root):\n    \"\"\"Return the Python files under root.\"\"\"\n    result = []\n    for name in os.listdir(root):\n        "


def env_for(name):
    root = os.path.join(WORK, name)
    shutil.rmtree(root, ignore_errors=True)
    for d in ("run", "data", "config"):
        os.makedirs(os.path.join(root, d))
    env = dict(os.environ)
    env.update(PHI_TUI_RUNTIME_DIR=f"{root}/run", PHI_TUI_DATA_DIR=f"{root}/data", PHI_TUI_CONFIG_DIR=f"{root}/config")
    return env


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


class Editor:
    """A `phi-tui lsp` process driven over JSON-RPC on its stdio."""

    def __init__(self, env, *extra):
        self.proc = subprocess.Popen([BIN, "lsp", "--threads", THREADS, "-m", MODEL, *extra], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.next_id = 1
        self.call("initialize", {"capabilities": {}, "initializationOptions": {"debounceMs": 0, "maxTokens": 16}})
        self.notify("initialized", {})
        doc = {"uri": "file:///bench.py", "languageId": "python", "version": 1, "text": SOURCE}
        self.notify("textDocument/didOpen", {"textDocument": doc})

    def send(self, message):
        body = json.dumps(message).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def receive(self):
        length = None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the language server exited")
            line = line.strip()
            if not line:
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return json.loads(self.proc.stdout.read(length))

    def call(self, method, params):
        request_id = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            message = self.receive()
            if message.get("id") == request_id and "method" not in message:
                return message
            if "id" in message and "method" in message:  # a request from the server: answer it
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def complete(self):
        lines = SOURCE.split("\n")
        position = {"line": len(lines) - 1, "character": len(lines[-1])}
        return self.call("textDocument/inlineCompletion",
                         {"textDocument": {"uri": "file:///bench.py"}, "position": position, "context": {"triggerKind": 1}})

    def close(self):
        self.proc.kill()
        self.proc.wait()


def status(env):
    out = subprocess.run([BIN, "status", "--json"], env=env, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_for(what, check, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def standalone():
    editor = Editor(env_for("standalone"), "--standalone")
    editor.complete()
    time.sleep(0.5)
    kib = pss_kib(editor.proc.pid)
    editor.close()
    return kib


def shared():
    env = env_for("shared")
    # A short reply: the TUI's request is there to touch its memory, not to measure speed.
    with open(os.path.join(env["PHI_TUI_CONFIG_DIR"], "config.toml"), "w") as f:
        f.write("max_tokens = 16\n")
    daemon = subprocess.Popen([BIN, "serve", "--threads", THREADS, "--idle-timeout", "0"], env=env,
                              stderr=subprocess.DEVNULL)
    tmux = ["tmux", "-L", f"phi-session-bench-{os.getpid()}"]
    try:
        wait_for("the daemon", lambda: status(env))
        command = " ".join(f"{k}={env[k]}" for k in ("PHI_TUI_RUNTIME_DIR", "PHI_TUI_DATA_DIR", "PHI_TUI_CONFIG_DIR"))
        subprocess.run(tmux + ["new-session", "-d", "-x", "120", "-y", "40",
                               f"env {command} {BIN} --threads {THREADS} -m {MODEL}"], check=True)
        wait_for("the TUI's model", lambda: (s := status(env)) and s["engine"]["model"] and
                 any(c["kind"] == "tui" for c in s["clients"]))
        subprocess.run(tmux + ["send-keys", "-l", "def add(a, b):"], check=True)
        subprocess.run(tmux + ["send-keys", "Enter"], check=True)
        wait_for("the chat reply", lambda: (s := status(env)) and s["generations"] >= 1 and
                 s["engine"]["pending_requests"] == 0)
        editors = [Editor(env), Editor(env)]
        for editor in editors:
            editor.complete()
        time.sleep(0.5)
        s = status(env)
        tui = next(c["pid"] for c in s["clients"] if c["kind"] == "tui")
        parts = {"daemon": pss_kib(s["pid"]), "tui": pss_kib(tui)}
        for i, editor in enumerate(editors, 1):
            parts[f"editor {i}"] = pss_kib(editor.proc.pid)
        for editor in editors:
            editor.close()
        return parts, s["model_loads"]
    finally:
        subprocess.run(tmux + ["kill-server"], stderr=subprocess.DEVNULL)
        subprocess.run([BIN, "serve", "--stop"], env=env, stderr=subprocess.DEVNULL)
        daemon.wait(timeout=30)


one = standalone()
parts, loads = shared()
total = sum(parts.values())
print(f"model: {MODEL} ({os.path.getsize(MODEL) / 2**20:.0f} MiB), threads {THREADS}")
print(f"standalone `phi-tui lsp --standalone`: {one / 1024:8.1f} MiB PSS")
for name, kib in parts.items():
    print(f"  shared: {name:<9} {kib / 1024:8.1f} MiB PSS")
print(f"shared session, daemon + TUI + 2 editors ({loads} model load): {total / 1024:8.1f} MiB PSS")
print(f"ratio shared / standalone: {total / one:.3f} (goal <= 1.1)")
