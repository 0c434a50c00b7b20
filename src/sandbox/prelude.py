# phi-tui sandbox prelude: runs program.py as __main__ (argv: program.py GUARD).
def _phi_tui_prepare():
    import os
    import sys

    path = sys.argv[1]
    if sys.argv[2] == "1":
        # Like human-eval's reliability_guard, for process creation only: it stops an accidental fork bomb
        # early, but it is no security boundary (ctypes gets around it); the OS-level limits are.
        def blocked(*args, **kwargs):
            raise PermissionError("process creation is disabled in the phi-tui sandbox")

        names = [
            "fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "kill", "killpg",
            "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
        ]
        for name in names:
            if hasattr(os, name):
                setattr(os, name, blocked)
        try:
            import _posixsubprocess

            _posixsubprocess.fork_exec = blocked
        except ImportError:
            pass
    with open(path, encoding="utf-8") as f:
        source = f.read()
    sys.argv = [path]
    globals()["__file__"] = path
    return compile(source, path, "exec")


exec(globals().pop("_phi_tui_prepare")())
