#!/usr/bin/env python3
"""End-to-end checks of baton-train's command line on the generated data set
(--data synthetic: no sklearn needed): every schedule trains (JSON fields,
the loss falls, accuracy in [0, 1], measured peak memory equals the
simulator's without checkpointing), --dump is bitwise reproducible and holds
what it says, --save / --load continue training, traces are written, and
bad input fails with a clear message.  Python only drives the program and
parses its output (no numpy)."""
import json
import os
import struct
import sys
import xml.etree.ElementTree as ET

from cli_util import Cli, read_safetensors

CLI = Cli(sys.argv[1], "train_cli.")
tmp = CLI.tmp
path, run, run_json, check = CLI.path, CLI.run, CLI.run_json, CLI.check
SMALL = ["--data", "synthetic", "--layers", "2", "--hidden", "32", "--batch", "32",
         "--microbatches", "4", "--threads", "2"]












def schedules():
    for sched in ("gpipe", "1f1b", "zb-h1", "interleaved"):
        r = run_json(*SMALL, "--schedule", sched, "--steps", "120")
        for k in ("loss", "first_loss", "last_loss", "accuracy", "step_ms",
                  "peak_activation_bytes", "sim_peak_activation_bytes", "balance",
                  "schedule", "devices", "microbatches", "steps", "stages"):
            assert k in r, f"{sched}: no {k}"
        assert r["schedule"] == sched, r["schedule"]
        assert r["devices"] == ["cpu:0", "cpu:1"], r["devices"]
        assert r["microbatches"] == 4 and r["steps"] == 120
        assert sum(r["balance"]) == 4 and len(r["balance"]) == r["stages"], r["balance"]
        assert r["stages"] == (4 if sched == "interleaved" else 2), r["stages"]
        assert len(r["peak_activation_bytes"]) == 2
        assert len(r["sim_peak_activation_bytes"]) == 2
        assert all(x > 0 for x in r["peak_activation_bytes"])
        assert r["loss"] < 0.7 * r["first_loss"], f"{sched}: loss {r['first_loss']} -> {r['loss']}"
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy"] > 0.5, f"{sched}: accuracy {r['accuracy']}"
        assert r["step_ms"] > 0


def same_loss_every_schedule():
    # Pipelining changes nothing but speed: the same data order gives the
    # same first-step loss whatever the schedule.
    first = {s: run_json(*SMALL, "--schedule", s, "--steps", "1")["first_loss"]
             for s in ("gpipe", "1f1b", "zb-h1", "interleaved")}
    assert len(set(first.values())) == 1, first


def memory_matches_simulator():
    # The measured peak equals the simulator's model of the same plan in
    # every checkpoint mode (recomputed microbatches hold their activations
    # from the backward's start), and checkpointing lowers it.
    for sched in ("gpipe", "1f1b", "zb-h1", "zb-h2", "interleaved"):
        peaks = {}
        for mode in ("never", "except_last", "always"):
            r = run_json(*SMALL, "--schedule", sched, "--steps", "2", "--checkpoint", mode)
            assert r["peak_activation_bytes"] == r["sim_peak_activation_bytes"], (sched, mode, r)
            peaks[mode] = r["peak_activation_bytes"]
        assert all(a <= b for a, b in zip(peaks["always"], peaks["never"])), (sched, peaks)
        assert peaks["always"] != peaks["never"], (sched, peaks)


def devices_and_balance():
    r = run_json(*SMALL, "--devices", "cpu:0,cpu:1,cpu:2", "--balance", "1,2,1",
                 "--microbatches", "4", "--steps", "3")
    assert r["devices"] == ["cpu:0", "cpu:1", "cpu:2"] and r["balance"] == [1, 2, 1], r


def dump_identical():
    a, b = path("a.safetensors"), path("b.safetensors")
    run(*SMALL, "--steps", "3", "--dump", a)
    run(*SMALL, "--steps", "3", "--dump", b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), "two dumps with the same seed differ"
    c = path("c.safetensors")
    run(*SMALL, "--steps", "3", "--dump", c, "--seed", "2")
    with open(a, "rb") as fa, open(c, "rb") as fc:
        assert fa.read() != fc.read(), "another seed gives the same dump"
    # Thread timing perturbed by random sleeps in every stage callback, on
    # several schedules and a balance that cuts the long skip across stages:
    # still the same bits.
    for sched in ("1f1b", "zb-h1", "gpipe"):
        x, y = path("x.safetensors"), path("y.safetensors")
        common = (*SMALL, "--schedule", sched, "--steps", "2", "--long-skip",
                  "--checkpoint", "always")
        run(*common, "--dump", x)
        run(*common, "--dump", y, "--perturb", "7")
        with open(x, "rb") as fx, open(y, "rb") as fy:
            assert fx.read() == fy.read(), f"{sched}: perturbed threads change the dump"


def dump_contents():
    d, ck = path("d.safetensors"), path("after1.safetensors")
    out = run(*SMALL, "--steps", "1", "--dump", d, "--save", ck, "--long-skip").stdout
    assert "dumped" in out, out
    t, meta = read_safetensors(d)
    H, E, D, C, N, L = 32, 128, 16, 4, 32, 2
    want = {"x": ("F32", [N, D]), "y": ("I32", [N]), "loss": ("F32", [1]),
            "in.w": [H, D], "in.b": [H], "head.ln.g": [H], "head.ln.b": [H],
            "head.w": [C, H], "head.b": [C]}
    for i in range(L):
        want.update({f"blk{i}.ln.g": [H], f"blk{i}.ln.b": [H], f"blk{i}.fc1.w": [E, H],
                     f"blk{i}.fc1.b": [E], f"blk{i}.fc2.w": [H, E], f"blk{i}.fc2.b": [H]})
    names = set()
    for k, v in want.items():
        if isinstance(v, tuple):
            names.add(k)
            assert t[k][0] == v[0] and t[k][1] == v[1], (k, t[k][:2])
        else:
            for pre in ("p.", "g."):
                names.add(pre + k)
                assert t[pre + k][0] == "F32" and t[pre + k][1] == v, (pre + k, t[pre + k][:2])
    assert set(t) == names, sorted(set(t) ^ names)
    assert meta.get("producer") == "baton-train", meta
    assert all(0 <= y < C for y in t["y"][2])
    assert 0 < t["loss"][2][0] < 10
    assert any(g != 0 for g in t["g.in.w"][2]), "zero gradient"
    # p.* is what the step used, before the update: the saved model after
    # that one step differs from it, by an optimizer step along -g.
    saved, _ = read_safetensors(ck)
    before, after, grad = t["p.head.w"][2], saved["head.w"][2], t["g.head.w"][2]
    assert before != after, "the dump holds the updated parameters"
    moved = [(a - b) * g for a, b, g in zip(after, before, grad) if g != 0 and a != b]
    assert moved and sum(1 for m in moved if m < 0) > 0.9 * len(moved), "update not along -grad"


def save_load():
    ck = path("ck.safetensors")
    run(*SMALL, "--steps", "150", "--save", ck)
    fresh = run_json(*SMALL, "--steps", "2")
    cont = run_json(*SMALL, "--steps", "2", "--load", ck)
    assert cont["first_loss"] < 0.7 * fresh["first_loss"], (fresh["first_loss"],
                                                            cont["first_loss"])


def trace_svg():
    tj, sv = path("t.json"), path("t.svg")
    run(*SMALL, "--steps", "3", "--schedule", "zb-h1", "--trace", tj, "--svg", sv)
    with open(tj) as f:
        ev = json.load(f)["traceEvents"]
    names = {e.get("name") for e in ev}
    assert any(n and n.endswith("W0") for n in names), names
    assert ET.parse(sv).getroot().tag.endswith("svg")
    assert not any(f.startswith("t.json.tmp") or f.startswith("t.svg.tmp")
                   for f in os.listdir(tmp))


def data_file():
    # A valid file of our own, then broken variants, each named in the error.
    def write(name, tensors):
        header, off, body = {}, 0, b""
        for k, (dt, shape, raw) in tensors.items():
            header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
            off += len(raw)
            body += raw
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(path(name), "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + body)
        return path(name)

    n, d = 40, 3
    xs = struct.pack(f"<{n * d}f", *[(i % 7) / 7 for i in range(n * d)])
    ys = struct.pack(f"<{n}i", *[i % 2 for i in range(n)])
    good = write("good.st", {"x": ("F32", [n, d], xs), "y": ("I32", [n], ys)})
    r = run_json("--data", good, "--layers", "1", "--hidden", "8", "--batch", "8",
                 "--steps", "3")
    assert r["classes"] == 2 and r["inputs"] == 3 and r["heldout_rows"] == 8, r
    cases = {
        "no_y.st": ({"x": ("F32", [n, d], xs)}, "'y'"),
        "y_f32.st": ({"x": ("F32", [n, d], xs), "y": ("F32", [n], ys)}, "I32"),
        "x_rank.st": ({"x": ("F32", [n * d], xs), "y": ("I32", [n], ys)}, "[N,D]"),
        "n_mismatch.st": ({"x": ("F32", [n, d], xs),
                           "y": ("I32", [n - 1], ys[:-4])}, "labels"),
        "bad_label.st": ({"x": ("F32", [n, d], xs),
                          "y": ("I32", [n], struct.pack(f"<{n}i", *([-1] + [0] * (n - 1))))},
                         "outside"),
    }
    for name, (tensors, needle) in cases.items():
        p = write(name, tensors)
        e = run("--data", p, "--steps", "1", ok=False)
        assert e.returncode == 1, (name, e.returncode)
        assert e.stderr.startswith("baton-train: ") and p in e.stderr and needle in e.stderr, \
            (name, e.stderr)
    e = run("--data", good, "--classes", "2", "--steps", "1",
            "--batch", "8", ok=True)
    bad = write("big_label.st", {"x": ("F32", [n, d], xs),
                                 "y": ("I32", [n], struct.pack(f"<{n}i", *([5] * n)))})
    e = run("--data", bad, "--classes", "3", "--steps", "1", ok=False)
    assert "outside [0, 3)" in e.stderr, e.stderr


def errors():
    garbage = path("garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(bytes((i * 97 + 13) % 256 for i in range(300)))
    ck = path("full.safetensors")
    run(*SMALL, "--steps", "1", "--save", ck)
    with open(ck, "rb") as f:
        data = f.read()
    trunc = path("trunc.safetensors")
    with open(trunc, "wb") as f:
        f.write(data[:len(data) // 2])
    cases = [
        (["--bogus"], 2, "unknown option '--bogus'"),
        (["--steps"], 2, "--steps needs a value"),
        (["--steps", "0"], 2, "--steps needs a whole number"),
        (["--devices", "cpu:0,gpu:1"], 2, "'gpu:1' is not a device"),
        (["--devices", "cpu:0,cpu:0"], 2, "twice"),
        (["--devices", "cpu:x"], 2, "device number"),
        (["--balance", "1,2"], 2, "--balance covers 3 layers but the model has 4"),
        (["--balance", "1,x"], 2, "--balance needs"),
        (["--balance", "1,1,1,1"], 2, "stages"),
        (["--schedule", "nope"], 2, "unknown schedule 'nope'"),
        (["--checkpoint", "sometimes"], 2, "--checkpoint is always"),
        (["--optimizer", "lbfgs"], 2, "--optimizer is sgd or adamw"),
        (["--microbatches", "3"], 2, "does not divide"),
        (["--model", "gpt"], 2, "--hidden is for --model resmlp"),
        (["--embd", "8"], 2, "--embd is a gpt option; add --model gpt"),
        (["--save", path("no/such/dir/ck.st")], 2, "cannot write in directory"),
        (["--data", garbage], 1, garbage),
        (["--data", path("missing.safetensors")], 1, "missing.safetensors"),
        (["--load", trunc], 1, trunc),
        (["--load", ck, "--hidden", "16"], 1, "--load"),
    ]
    for args, code, needle in cases:
        a = list(SMALL) + args if "--data" not in args else \
            ["--layers", "2", "--hidden", "32", "--batch", "32"] + args
        e = run(*a, "--steps", "1", ok=False) if "--steps" not in args else run(*a, ok=False)
        assert e.returncode == code, (args, e.returncode, e.stderr)
        assert e.stderr.startswith("baton-train: "), (args, e.stderr)
        assert needle in e.stderr, (args, e.stderr)
    # Nothing half-written: a failed --save leaves no file behind.
    assert not os.path.exists(path("no"))


def help_text():
    out = run("--help").stdout
    for flag in ("--data", "--devices", "--balance", "--schedule", "--checkpoint",
                 "--dump", "--save", "--load", "--trace", "--svg", "--json"):
        assert flag in out, flag


def data_parallel():
    # --dp 2 with m=2 per replica is the batch in 4 microbatches: the same
    # first loss bitwise, gradients within float reordering, and training
    # reaches the same loss; every device of both replicas reports.
    common = [*SMALL, "--steps", "1", "--long-skip", "--optimizer", "sgd"]
    a, b = path("dp1.st"), path("dp2.st")
    run(*common, "--microbatches", "4", "--dump", a)
    r = run_json(*common, "--microbatches", "2", "--dp", "2", "--devices",
                 "cpu:0,cpu:1,cpu:2,cpu:3", "--dump", b)
    assert r["dp"] == 2 and len(r["peak_activation_bytes"]) == 4, r
    ta, _ = read_safetensors(a)
    tb, _ = read_safetensors(b)
    assert ta["loss"] == tb["loss"], (ta["loss"], tb["loss"])
    for name, (_, _, va) in ta.items():
        vb = tb[name][2]
        ref = max((abs(x) for x in va), default=0.0) or 1.0
        d = max((abs(x - y) for x, y in zip(va, vb)), default=0.0)
        assert d <= 1e-5 * ref, f"{name}: {d} (max {ref})"
    p = run(*SMALL, "--dp", "3", "--devices", "cpu:0,cpu:1,cpu:2,cpu:3", ok=False)
    assert "not a multiple of --dp 3" in p.stderr, p.stderr


check("schedules train (gpipe, 1f1b, zb-h1, interleaved)", schedules)
check("--dp 2 equals one replica", data_parallel)
check("same first loss under every schedule", same_loss_every_schedule)
check("measured peak memory = simulated (every checkpoint mode)", memory_matches_simulator)
check("--devices and --balance", devices_and_balance)
check("--dump is bitwise reproducible", dump_identical)
check("--dump contents", dump_contents)
check("--save then --load continues", save_load)
check("--trace and --svg", trace_svg)
check("--data PATH and its validation", data_file)
check("errors", errors)
check("--help", help_text)
CLI.finish()
