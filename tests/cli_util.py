"""What the command-line tests share (train_cli.py, train_gpt_cli.py): a
temporary directory, running the program (exit status checked both ways,
output decoded leniently: sampled text may hold any byte), one-line --json
output, named checks that report every failure, and a safetensors reader
(no numpy)."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile


class Cli:
    def __init__(self, program, prefix):
        self.program = program
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.passed = 0
        self.failures = 0

    def path(self, name):
        return os.path.join(self.tmp, name)

    def run(self, *args, ok=True):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        p = subprocess.run([self.program, *args], capture_output=True,
                           timeout=120, env=env)
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        if ok and p.returncode != 0:
            raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
        if not ok and p.returncode == 0:
            raise AssertionError(f"{args}: expected failure, got {p.stdout}")
        return p

    def run_json(self, *args):
        out = self.run(*args, "--json").stdout
        lines = out.strip().splitlines()
        assert len(lines) == 1, f"--json printed {len(lines)} lines: {out!r}"
        return json.loads(lines[0])

    def check(self, name, fn):
        try:
            fn()
            self.passed += 1
            print(f"ok   {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure
            self.failures += 1
            print(f"FAIL {name}: {e}", flush=True)

    def finish(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        print(f"{self.passed} passed, {self.failures} failed")
        sys.exit(1 if self.failures else 0)


def read_safetensors(fname):
    """Tensors in file order: name -> (dtype, shape, values), and the
    metadata."""
    with open(fname, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in sorted(header.items(),
                          key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = t["data_offsets"]
        raw = body[b:e]
        fmt = {"F32": "f", "I32": "i"}[t["dtype"]]
        tensors[name] = (t["dtype"], t["shape"],
                         struct.unpack(f"<{len(raw) // 4}{fmt}", raw))
    return tensors, meta
