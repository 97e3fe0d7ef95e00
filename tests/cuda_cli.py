#!/usr/bin/env python3
"""baton-train on CUDA devices against the CPU devices: with 1, 2 and 4
logical devices on cuda:0 and gpipe, 1f1b and zb-h1, the first step's loss
and every gradient and parameter of --dump within 1e-4 of the CPU run's
(relative to each tensor's largest entry), and 40 steps of training reach
the CPU run's loss within 1e-3.  Exits 77 (skipped) without a GPU."""
import sys

from cli_util import Cli, read_safetensors

CLI = Cli(sys.argv[1], "cuda_cli.")
path, run, run_json, check = CLI.path, CLI.run, CLI.run_json, CLI.check
SMALL = ["--data", "synthetic", "--layers", "6", "--hidden", "64", "--batch", "64",
         "--microbatches", "4", "--long-skip", "--optimizer", "sgd", "--lr", "0.05"]

probe = run(*SMALL, "--devices", "cuda:0", "--steps", "1", ok=False)
if probe.returncode != 0:
    if "no GPU is usable" in probe.stderr or "built without CUDA" in probe.stderr:
        print("no usable CUDA device here: skipped")
        sys.exit(77)
    print(f"FAIL cuda:0 does not run: {probe.stderr}")
    sys.exit(1)


def close(a, b, what):
    for name, (_, _, va) in a.items():
        vb = b[name][2]
        ref = max((abs(x) for x in va), default=0.0) or 1.0
        d = max((abs(x - y) for x, y in zip(va, vb)), default=0.0)
        assert d <= 1e-4 * ref, f"{what}: {name} differs by {d:.3g} (max {ref:.3g})"


def devices(kind, n):
    return ",".join(f"{kind}:{0 if kind == 'cuda' else i}" for i in range(n))


def matches(sched, n):
    def fn():
        a, b = path(f"cpu{sched}{n}.st"), path(f"cuda{sched}{n}.st")
        common = [*SMALL, "--schedule", sched, "--steps", "1", "--balance",
                  {1: "8", 2: "4,4", 4: "2,2,2,2"}[n]]
        run(*common, "--devices", devices("cpu", n), "--dump", a)
        run(*common, "--devices", devices("cuda", n), "--dump", b)
        ta, _ = read_safetensors(a)
        tb, _ = read_safetensors(b)
        assert ta["x"] == tb["x"] and ta["y"] == tb["y"], "different batches"
        close(ta, tb, f"{sched} on {n} devices")
    return fn


def trains():
    common = [*SMALL, "--schedule", "1f1b", "--steps", "40", "--balance", "4,4"]
    a = run_json(*common, "--devices", "cpu:0,cpu:1")
    b = run_json(*common, "--devices", "cuda:0,cuda:0")
    assert b["devices"] == ["cuda:0", "cuda:0"], b["devices"]
    assert abs(a["loss"] - b["loss"]) <= 1e-3 * abs(a["loss"]), (a["loss"], b["loss"])


def data_parallel_one_gpu():
    # NCCL refuses two ranks on one GPU: one replica runs, and says so.
    p = run(*SMALL, "--steps", "2", "--dp", "2", "--devices",
            "cuda:0,cuda:0,cuda:0,cuda:0")
    assert ("one GPU per replica" in p.stderr or "without NCCL" in p.stderr) \
        and "running 1 replica" in p.stderr, p.stderr


for sched in ("gpipe", "1f1b", "zb-h1"):
    for n in (1, 2, 4):
        check(f"{sched} on {n} cuda devices matches the CPU", matches(sched, n))
check("40 steps on cuda:0,cuda:0 train as on the CPU", trains)
check("--dp 2 on one GPU runs one replica and says so", data_parallel_one_gpu)
CLI.finish()
