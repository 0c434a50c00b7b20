#!/usr/bin/env python3
"""Completion latency through the language server: `phi-tui lsp` driven over stdio by a minimal JSON-RPC client.

    python3 tests/gpu/lsp_latency.py --bin PHI_TUI --model MODEL.gguf [--requests 40] [--max-line-tokens 16]
                                     [--json OUT.json] [--log lsp.log] [-- EXTRA PHI-TUI LSP ARGS]

It opens a Python module, then types a new function at its end one character at a time (incremental didChange), and
after each word asks for an inline completion (`textDocument/inlineCompletion`, invoked, single-line mode, no
debounce) at the cursor. A warm-up request first waits for the model and decodes the whole file, and the first
`--warmup` typed requests are not measured either; every later one finds the file's tokens in the engine's KV cache
and decodes only what was typed since, as in an editor. Reported: p50/p95 of
the time from sending a request to its answer, over the requests the model answered (the server's log says which;
its suggestion cache answers the others without the model).

Random-weight models seldom end a line, so each suggestion runs to `--max-line-tokens` tokens: 16 by default, the
length of a typical line of Python in phi-1's tokens. Only the standard library is used (the GPU machine has no pip
access).
"""
import argparse
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

URI = "file:///gpu-check/stats.py"

DOCUMENT = '''"""Small statistics helpers."""
import math
from collections import Counter
from typing import Iterable, List, Sequence


def mean(values: Sequence[float]) -> float:
    """Return the arithmetic mean of values."""
    if not values:
        raise ValueError("mean of an empty sequence")
    return sum(values) / len(values)


def median(values: Sequence[float]) -> float:
    """Return the median of values."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of an empty sequence")
    middle = n // 2
    if n % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def mode(values: Iterable[int]) -> int:
    """Return the most common value."""
    counts = Counter(values)
    value, _ = counts.most_common(1)[0]
    return value


def variance(values: Sequence[float]) -> float:
    """Return the population variance of values."""
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Return the population standard deviation of values."""
    return math.sqrt(variance(values))


def normalize(values: Sequence[float]) -> List[float]:
    """Scale values to zero mean and unit variance."""
    m, s = mean(values), stdev(values)
    return [(v - m) / s for v in values]

'''

TYPED = '''
def percentile(values: Sequence[float], p: float) -> float:
    """Return the p-th percentile of values, interpolating linearly."""
    if not 0 <= p <= 100:
        raise ValueError("p must be between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def zscores(values: Sequence[float]) -> List[float]:
    """Return how many standard deviations each value is from the mean."""
    m = mean(values)
    s = stdev(values)
    return [(value - m) / s for value in values]
'''

WORD_END = set(" \n(),:.=[]")


class Server:
    """A `phi-tui lsp` child process and the JSON-RPC framing around its stdio."""

    def __init__(self, command, env):
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env)
        self.next_id = 1
        self.responses = {}
        self.arrived = threading.Condition()
        self.messages = queue.Queue()  # window/showMessage texts, reported at the end
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self, message):
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def _read(self):
        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    with self.arrived:
                        self.arrived.notify_all()
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if length is None:
                continue
            message = json.loads(stream.read(length))
            if "method" in message and "id" in message:
                # A request from the server (e.g. window/workDoneProgress/create): any answer will do.
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            elif "method" in message:
                if message["method"] == "window/showMessage":
                    self.messages.put(message["params"].get("message", ""))
            else:
                with self.arrived:
                    self.responses[message.get("id")] = message
                    self.arrived.notify_all()

    def notify(self, method, params):
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def call(self, method, params, timeout=120.0):
        request_id = self.next_id
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        with self.arrived:
            while request_id not in self.responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise RuntimeError(f"{method}: no answer (server exit status {self.process.poll()})")
                self.arrived.wait(left)
            response = self.responses.pop(request_id)
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result")

    def close(self):
        try:
            self.call("shutdown", None, timeout=10)
            self.notify("exit", None)
            self.process.wait(timeout=10)
        except Exception:  # a server that does not stop is killed; the measurements are already taken
            self.process.kill()


def inline_completion(server, line, character):
    server.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI},
        "position": {"line": line, "character": character},
        "context": {"triggerKind": 1},  # invoked: no debounce, even right after a deletion
    })


def position_after(text):
    """The LSP position (UTF-16 code units; this text is ASCII) at the end of `text`."""
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


def completion_log(log_path):
    """The server's `completion` log lines by document version: cache hit or miss, and the engine's timings."""
    entries = {}
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if " completion " not in line or "uri=" not in line:
                continue
            fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
            if "version" in fields:
                entries[int(fields["version"])] = {k: v.strip('"') for k, v in fields.items()}
    return entries


def open_and_warm_up(server, settings, log_path):
    """Initializes `server` with `settings` and opens DOCUMENT, then asks for a completion at its end until one reaches
    the model: the model loads in the background after `initialized`, and requests before that get nothing. That
    first completion decodes the whole file into the KV cache. Returns its time in ms."""
    server.call("initialize", {
        "processId": os.getpid(),
        "rootUri": None,
        "capabilities": {"textDocument": {"inlineCompletion": {}}},
        "initializationOptions": settings,
    })
    server.notify("initialized", {})
    server.notify("textDocument/didOpen", {
        "textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": DOCUMENT},
    })
    line, character = position_after(DOCUMENT)
    warmup_started, warmup_ms = time.perf_counter(), 0.0
    while not any(e.get("cache") == "miss" for e in completion_log(log_path).values()):
        if time.perf_counter() - warmup_started > 300:
            sys.exit(f"the server answered no completion from the model within 300 s; log: {log_path}")
        started = time.perf_counter()
        inline_completion(server, line, character)
        warmup_ms = (time.perf_counter() - started) * 1000.0
        time.sleep(0.05)
    return warmup_ms


def percentile(sorted_values, p):
    return sorted_values[round((len(sorted_values) - 1) * p)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the phi-tui binary")
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=40, help="measured requests (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="typed requests not measured (after the one that loads the model and the file)")
    parser.add_argument("--max-line-tokens", type=int, default=16)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--log", help="the server's log file (default: a temporary file)")
    parser.add_argument("extra", nargs="*", help="more arguments for `phi-tui lsp` (after --)")
    args = parser.parse_args()

    log_path = args.log or os.path.join(tempfile.mkdtemp(prefix="phi-lsp-latency-"), "lsp.log")
    if os.path.exists(log_path):
        os.remove(log_path)
    env = dict(os.environ)
    # `info` makes the server log one line per completion, with its cache hit or miss and the engine's timings.
    env["PHI_TUI_LOG"] = "info,llama-cpp-2=warn"
    command = [args.bin, "lsp", "-m", args.model, "--log-file", log_path, *args.extra]
    server = Server(command, env)
    try:
        settings = {"debounceMs": 0, "mode": "singleLine", "maxLineTokens": args.max_line_tokens}
        warmup_ms = open_and_warm_up(server, settings, log_path)
        text, version = DOCUMENT, 1

        latencies = []  # (document version, ms)
        typed = iter(TYPED)
        while len(latencies) < args.warmup + args.requests:
            ch = next(typed, None)
            if ch is None:
                break
            line, character = position_after(text)
            text += ch
            version += 1
            server.notify("textDocument/didChange", {
                "textDocument": {"uri": URI, "version": version},
                "contentChanges": [{"range": {"start": {"line": line, "character": character},
                                              "end": {"line": line, "character": character}}, "text": ch}],
            })
            if ch not in WORD_END:
                continue
            line, character = position_after(text)
            started = time.perf_counter()
            inline_completion(server, line, character)
            latencies.append((version, (time.perf_counter() - started) * 1000.0))
    finally:
        server.close()

    log = completion_log(log_path)
    latencies = latencies[args.warmup:]
    by_model = [(v, ms) for v, ms in latencies if log.get(v, {}).get("cache") == "miss"]
    if not by_model:
        messages = []
        while not server.messages.empty():
            messages.append(server.messages.get())
        sys.exit(f"no completion reached the model ({len(latencies)} requests); server messages: {messages}; "
                 f"log: {log_path}")
    ms_sorted = sorted(ms for _, ms in by_model)
    decoded = [int(log[v]["decoded_tokens"]) for v, _ in by_model]
    engine_ms = [float(log[v]["prompt_ms"]) + float(log[v]["gen_ms"]) for v, _ in by_model]
    result = {
        "model": args.model,
        "requests": len(latencies),
        "model_requests": len(by_model),
        "max_line_tokens": args.max_line_tokens,
        "p50_ms": statistics.median(ms_sorted),
        "p95_ms": percentile(ms_sorted, 0.95),
        "max_ms": ms_sorted[-1],
        "warmup_ms": warmup_ms,
        "median_decoded_prompt_tokens": statistics.median(decoded),
        "median_engine_ms": statistics.median(engine_ms),
        "prompt_tokens_first": int(log.get(1, {}).get("prompt_tokens", 0)),
    }
    print(f"{os.path.basename(args.model)}: {result['model_requests']} of {result['requests']} completions from the "
          f"model: p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms "
          f"(engine {result['median_engine_ms']:.1f} ms; {result['median_decoded_prompt_tokens']} prompt tokens "
          f"decoded, up to {args.max_line_tokens} generated); warm-up {result['warmup_ms']:.0f} ms for "
          f"{result['prompt_tokens_first']} prompt tokens")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
