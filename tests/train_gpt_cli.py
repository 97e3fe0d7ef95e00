#!/usr/bin/env python3
"""End-to-end checks of `baton-train --model gpt` on a small text file this
script writes (--data FILE; the fortunes corpus is not needed): the first
step's --dump (loss, every parameter and gradient) is the same for the
plain step and every pipelined and data-parallel configuration, tied and
untied; a short training run learns, reports its numbers in --json and
samples text deterministically; --save / --load --steps 0 give the same
sample; bad input fails with a clear message.  Python only drives the
program and parses its output (no numpy)."""
import json
import math
import os
import shutil
import sys
import xml.etree.ElementTree as ET

from cli_util import Cli, read_safetensors

CLI = Cli(sys.argv[1], "train_gpt_cli.")
tmp = CLI.tmp
path, run, run_json, check = CLI.path, CLI.run, CLI.run_json, CLI.check
TEXT = os.path.join(tmp, "corpus.txt")
with open(TEXT, "w") as f:
    # Repetitive, so a tiny model learns it in a few dozen steps.
    for i in range(300):
        f.write(f"the quick brown fox {i % 7} jumps over the lazy dog.\n")
L, C, NH, T, B = 2, 32, 2, 16, 8
TINY = ["--model", "gpt", "--data", TEXT, "--layers", str(L), "--embd", str(C),
        "--heads", str(NH), "--seq", str(T), "--batch", str(B), "--threads", "2",
        "--generate", "0"]












def param_names(untied):
    names = ["wte", "wpe"]
    for i in range(L):
        for k in ("ln1.g", "ln1.b", "attn.qkv.w", "attn.qkv.b", "attn.proj.w",
                  "attn.proj.b", "ln2.g", "ln2.b", "mlp.fc.w", "mlp.fc.b",
                  "mlp.proj.w", "mlp.proj.b"):
            names.append(f"blk{i}.{k}")
    names += ["lnf.g", "lnf.b"]
    if untied:
        names.append("head.w")
    return names


def close(a, b, rel=1e-5):
    """Every element within rel of the tensor's largest magnitude."""
    scale = max(max(abs(v) for v in a), max(abs(v) for v in b), 1e-30)
    worst = max(abs(x - y) for x, y in zip(a, b))
    return worst <= rel * scale, worst / scale


CONFIGS = {
    "1f1b p=2 m=2": ["--schedule", "1f1b", "--devices", "cpu:0,cpu:1", "--microbatches", "2"],
    "zb-h1 p=2 m=2": ["--schedule", "zb-h1", "--devices", "cpu:0,cpu:1", "--microbatches", "2"],
    "interleaved p=2 v=2 m=2": ["--schedule", "interleaved", "--devices", "cpu:0,cpu:1",
                                "--virtual", "2", "--microbatches", "2"],
    "1f1b dp=2 p=2 m=2": ["--schedule", "1f1b", "--dp", "2", "--devices",
                          "cpu:0,cpu:1,cpu:2,cpu:3", "--microbatches", "2"],
}
REFERENCE = ["--schedule", "gpipe", "--devices", "cpu:0", "--microbatches", "1"]


def compare_dumps(ref, other, label):
    for name, (dt, shape, vals) in ref.items():
        assert name in other, f"{label}: no {name}"
        assert other[name][:2] == (dt, shape), (label, name, other[name][:2], (dt, shape))
        if dt == "I32":
            assert other[name][2] == vals, f"{label}: {name} differs"
        else:
            good, worst = close(vals, other[name][2])
            assert good, f"{label}: {name} differs by {worst:.3g} relative"
    assert set(ref) == set(other), (label, sorted(set(ref) ^ set(other)))


def dumps_agree(dropout):
    for untied in (False, True):
        extra = ["--untied"] if untied else []
        common = [*TINY, *extra, "--dropout", dropout, "--steps", "1"]
        ref_file = path(f"ref{int(untied)}.safetensors")
        run(*common, *REFERENCE, "--dump", ref_file)
        ref, meta = read_safetensors(ref_file)
        assert meta.get("producer") == "baton-train", meta
        want = ["x", "y", "loss"]
        for n in param_names(untied):
            want += [f"p.{n}", f"g.{n}"]
        assert list(ref) == want, f"dump order {list(ref)}"
        assert ref["x"][:2] == ("I32", [B, T]) and ref["y"][:2] == ("I32", [B, T])
        x, y = ref["x"][2], ref["y"][2]
        assert all(x[b * T + t + 1] == y[b * T + t] for b in range(B) for t in range(T - 1)), \
            "y is not x shifted by one"
        assert all(0 <= v < 256 for v in x + y)
        loss = ref["loss"][2][0]
        assert 0.5 * math.log(256) < loss < 2 * math.log(256), loss
        assert ref["g.wte"][1] == [256, C] and ref["p.wpe"][1] == [T, C]
        assert any(g != 0 for g in ref["g.wte"][2]), "zero wte gradient"
        for label, args in CONFIGS.items():
            f = path("other.safetensors")
            run(*common, *args, "--dump", f)
            other, _ = read_safetensors(f)
            compare_dumps(ref, other, f"{label}{' untied' if untied else ''}")


def dumps_reproducible():
    a, b = path("a.safetensors"), path("b.safetensors")
    args = [*TINY, "--dropout", "0.1", "--steps", "2", *CONFIGS["zb-h1 p=2 m=2"]]
    run(*args, "--dump", a)
    run(*args, "--dump", b, "--perturb", "5")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), "perturbed threads change the dump"


def train_and_generate():
    args = [*TINY, "--steps", "80", "--lr", "3e-3", "--microbatches", "2",
            "--generate", "50", "--seed", "3"]
    ck = path("gpt.safetensors")
    r1 = run_json(*args, "--save", ck)
    for k in ("model", "layers", "embd", "heads", "seq", "batch", "microbatches", "dp",
              "devices", "schedule", "steps", "loss", "first_loss", "val_loss", "val_ppl",
              "tokens_per_s", "step_ms", "params", "generated"):
        assert k in r1, f"no {k}"
    assert r1["model"] == "gpt" and r1["layers"] == L and r1["embd"] == C, r1
    assert r1["heads"] == NH and r1["seq"] == T and r1["batch"] == B and r1["dp"] == 1
    assert r1["devices"] == ["cpu:0", "cpu:1"] and r1["schedule"] == "1f1b", r1
    assert math.isfinite(r1["loss"]) and r1["loss"] < 0.7 * r1["first_loss"], \
        (r1["first_loss"], r1["loss"])
    assert math.isfinite(r1["val_ppl"]) and r1["val_ppl"] < 20, r1["val_ppl"]
    assert abs(math.exp(r1["val_loss"]) - r1["val_ppl"]) < 1e-3 * r1["val_ppl"]
    assert r1["tokens_per_s"] > 0 and r1["step_ms"] > 0
    want_params = 256 * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    assert r1["params"] == want_params, (r1["params"], want_params)
    assert isinstance(r1["generated"], str) and len(r1["generated"]) == 50, r1["generated"]
    r2 = run_json(*args)
    assert r2["generated"] == r1["generated"], (r1["generated"], r2["generated"])
    assert r2["loss"] == r1["loss"] and r2["val_ppl"] == r1["val_ppl"]
    # The same text from the checkpoint, without training.
    r3 = run_json(*TINY, "--load", ck, "--steps", "0", "--generate", "50", "--seed", "3")
    assert r3["generated"] == r1["generated"], (r1["generated"], r3["generated"])
    assert r3["val_ppl"] == r1["val_ppl"] and r3["loss"] is None, r3
    # By default 200 bytes are sampled; --generate 0 samples none.
    r4 = run_json(*TINY[:-2], "--steps", "1")
    assert len(r4["generated"]) == 200, r4
    assert "generated" not in run_json(*TINY, "--steps", "1")
    # The plain-text report and a prompt.
    out = run(*TINY, "--load", ck, "--steps", "0", "--generate", "20", "--prompt",
              "the quick", "--temperature", "0").stdout
    assert "perplexity" in out and "sample" in out and "the quick" in out, out


def data_parallel_and_trace():
    tj, sv = path("t.json"), path("t.svg")
    r = run_json(*TINY, *CONFIGS["1f1b dp=2 p=2 m=2"], "--steps", "3", "--trace", tj,
                 "--svg", sv, "--checkpoint", "always")
    assert r["dp"] == 2 and len(r["devices"]) == 4 and r["stages"] == 2, r
    with open(tj) as f:
        ev = json.load(f)["traceEvents"]
    assert ev, "empty trace"
    assert ET.parse(sv).getroot().tag.endswith("svg")
    # A directory corpus: only regular files without a '.' are read.
    d = path("corpus")
    os.mkdir(d)
    shutil.copy(TEXT, os.path.join(d, "a"))
    shutil.copy(TEXT, os.path.join(d, "b"))
    with open(os.path.join(d, "a.dat"), "wb") as f:
        f.write(b"\xff" * 100000)
    os.symlink(os.path.join(d, "a"), os.path.join(d, "c"))
    r = run_json(*TINY[:2], "--data", d, *TINY[4:], "--steps", "1")
    assert r["train_bytes"] + r["val_bytes"] == 2 * os.path.getsize(TEXT), r


def errors():
    small = path("small.txt")
    with open(small, "w") as f:
        f.write("x" * 100)
    garbage = path("garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(bytes((i * 97 + 13) % 256 for i in range(300)))
    base = [a for a in TINY if a != "--model" and a != "gpt"]
    cases = [
        (["--dp", "2", "--devices", "cpu:0,cpu:1,cpu:2"], 2, "not a multiple of --dp 2"),
        (["--dp", "2", "--microbatches", "3"], 2, "not divisible by --dp 2"),
        (["--data", path("missing")], 1,
         f"--data {path('missing')}: not found; install the Debian package fortunes"),
        (["--seq", "5000"], 2, "--seq 5000 is larger than"),
        (["--data", small, "--seq", "60"], 2, "--seq 60 is too long"),
        (["--embd", "30", "--heads", "4"], 2, "not a multiple of --heads"),
        (["--dropout", "1"], 2, "--dropout"),
        (["--hidden", "16"], 2, "--hidden is for --model resmlp"),
        (["--long-skip"], 2, "--long-skip is for --model resmlp"),
        (["--prompt", "hi", "--generate", "0"], 2, "--prompt needs --generate"),
        (["--steps", "0", "--dump", path("d.st")], 2, "--dump needs a training step"),
        (["--balance", "1,1"], 2, "--balance covers 2 layers but the model has 4"),
        (["--schedule", "nope"], 2, "unknown schedule 'nope'"),
        (["--load", garbage], 1, garbage),
        (["--bogus"], 2, "unknown option '--bogus'"),
        (["--data", "synthetic"], 2, "--data synthetic is a resmlp data set"),
    ]
    for args, code, needle in cases:
        e = run("--model", "gpt", *base, *args, ok=False)
        assert e.returncode == code, (args, e.returncode, e.stderr)
        assert e.stderr.startswith("baton-train: "), (args, e.stderr)
        assert needle in e.stderr, (args, e.stderr)
    # gpt options with the resmlp model, and --steps 0 there.
    for args, needle in ((["--embd", "8"], "--embd is a gpt option"),
                         (["--untied"], "--untied is a gpt option"),
                         (["--steps", "0"], "--steps needs a whole number >= 1"),
                         (["--model", "bert"], "resmlp and gpt")):
        e = run("--data", "synthetic", *args, ok=False)
        assert e.returncode == 2 and needle in e.stderr, (args, e.returncode, e.stderr)


def help_text():
    out = run("--help").stdout
    for flag in ("--model resmlp|gpt", "--embd", "--heads", "--seq", "--dropout", "--untied",
                 "--dp", "--clip", "--generate", "--prompt", "--temperature"):
        assert flag in out, flag


check("--dump: every schedule, p, v and dp give the reference step (dropout 0)",
      lambda: dumps_agree("0"))
check("--dump: the same with dropout 0.2", lambda: dumps_agree("0.2"))
check("--dump is bitwise reproducible under perturbed threads", dumps_reproducible)
check("training, --json, --generate, --save / --load --steps 0", train_and_generate)
check("--dp 2 with --trace and --svg; a directory corpus", data_parallel_and_trace)
check("errors", errors)
check("--help", help_text)
CLI.finish()
