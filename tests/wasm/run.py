#!/usr/bin/env python3
"""Runs a wasm32-wasip1 test binary in Wasmtime: cargo's runner for `make test-wasm`.

    CARGO_TARGET_WASM32_WASIP1_RUNNER="python tests/wasm/run.py" cargo test --lib --target wasm32-wasip1

Cargo calls it as `run.py <binary.wasm> <test args...>`.

* Imports. The unit-test binary of this crate also links the proxy-wasm glue (src/filter is
  compiled for wasm32), so it imports the host ABI (`env.proxy_*`). Those imports are defined as
  traps: no unit test calls them, and one that did would fail loudly rather than pass vacuously.
* WASI. The program gets its arguments, this process's environment, stdout/stderr and a random
  source (getrandom). No directory is preopened: the unit tests read no files at run time.
* SIMD. Enabled: the crate is built with `+simd128` (.cargo/config.toml), as the filter is.
* Panics. On wasm32 a panic aborts (no unwinding): the instance traps in the middle of the test
  run, the test's captured output (its panic message) is lost and the tests after it never run.
  So the runner passes `--nocapture` (the panic message reaches stderr before the abort) and,
  when a run aborts, names the test that was running, then runs the remaining tests in a fresh
  instance with that test skipped — as many times as needed — so one failure hides no other.

Exit code: 0 when every test passed; libtest's code (101) when it reports a failure; 101 when a
test aborted the run.
"""
import os
import re
import sys

try:
    import wasmtime
except ImportError:  # a setup problem, not a test failure
    sys.exit("tests/wasm/run.py: the wasmtime package is missing; `make envoy` installs it into .venv")

RUNNING = re.compile(rb"^test (\S+) \.\.\. ", re.M)
RESULT = re.compile(rb"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", re.M)
MAX_ABORTS = 50


class Program:
    def __init__(self, path):
        self.path = path
        config = wasmtime.Config()
        config.wasm_simd = True
        self.engine = wasmtime.Engine(config)
        self.module = wasmtime.Module.from_file(self.engine, path)  # compiled once, run many times
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self.linker.define_unknown_imports_as_traps(self.module)

    def run(self, args):
        """Runs the program once; returns (exit code or None if it trapped, trap, stdout bytes)."""
        out = bytearray()

        def write(data):
            out.extend(data)
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

        wasi = wasmtime.WasiConfig()
        wasi.argv = [os.path.basename(self.path)] + args
        wasi.env = list(os.environ.items())
        wasi.stdout_custom = write
        wasi.inherit_stderr()
        store = wasmtime.Store(self.engine)
        store.set_wasi(wasi)
        try:
            instance = self.linker.instantiate(store, self.module)
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as e:
            return e.code, None, bytes(out)
        except wasmtime.Trap as e:
            return None, str(e), bytes(out)
        finally:
            # Drop the store (and the stdout callback it holds) now, not at interpreter shutdown,
            # when Wasmtime can no longer call back into Python.
            store.close()
        return 0, None, bytes(out)


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: run.py <binary.wasm> [test args...]")
    program = Program(argv[1])
    args = list(argv[2:])
    listing = "--list" in args
    if not listing and "--nocapture" not in args:
        args.append("--nocapture")
    aborted = []
    while True:
        skips = [a for name in aborted for a in ("--skip", name)]
        code, trap, out = program.run(args + skips)
        if trap is None:
            break
        running = RUNNING.findall(out)
        name = running[-1].decode() if running else None
        print(f"\n\ntests/wasm/run.py: the run aborted (a panic on wasm32 traps):\n{trap}", file=sys.stderr)
        if listing or name is None or name in aborted or len(aborted) >= MAX_ABORTS:
            return 101
        print(f"tests/wasm/run.py: '{name}' aborted; running the tests after it without it\n", file=sys.stderr)
        aborted.append(name)
    if aborted:
        print(f"\ntests/wasm/run.py: {len(aborted)} test(s) aborted the run (failed):", file=sys.stderr)
        for name in aborted:
            print(f"    {name}", file=sys.stderr)
        # The last run's closing line counts only the tests it ran: close with the whole count.
        last = RESULT.findall(out)
        passed, failed, ignored = (int(n) for n in last[-1]) if last else (0, 0, 0)
        sys.stdout.flush()
        print(f"\ntest result: FAILED. {passed} passed; {failed + len(aborted)} failed; {ignored} ignored (under Wasmtime)")
        return 101
    return code


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: Wasmtime's runtime threads have been seen to panic when torn
    # down with the interpreter (once, after a `--list` run), which would turn a pass into an abort.
    os._exit(status)
