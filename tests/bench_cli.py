#!/usr/bin/env python3
"""End-to-end checks of baton-bench's command line: JSON fields, the table,
CSV dump and reload, Chrome trace and SVG output, and clear errors."""
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

BENCH = sys.argv[1]
PLUGIN = sys.argv[2]
SOURCE_DIR = sys.argv[3]
failures = 0
passed = 0


def run(*args, ok=True):
    p = subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=60)
    if ok and p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    if not ok and p.returncode == 0:
        raise AssertionError(f"{args}: expected failure, got {p.stdout}")
    return p


def check(name, fn):
    global failures, passed
    try:
        fn()
        passed += 1
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 - report every failure
        failures += 1
        print(f"FAIL {name}: {e}")


def json_fields():
    out = run("--schedule", "gpipe,1f1b,interleaved,zb-h1,zb-h2", "--devices", "4",
              "--microbatches", "8", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["schedule"] for r in rows] == ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2"]
    for r in rows:
        for k in ("schedule", "backend", "devices", "virtual", "stages", "microbatches",
                  "tasks", "makespan", "busy", "bubble", "peak_mem", "lower_bound"):
            assert k in r, k
        assert r["backend"] == "sim" and r["devices"] == 4 and r["microbatches"] == 8
        assert len(r["busy"]) == 4 and len(r["peak_mem"]) == 4
        assert abs(r["bubble"] - (1 - sum(r["busy"]) / (4 * r["makespan"]))) < 1e-12
        assert r["lower_bound"] <= r["makespan"] + 1e-9
    g, f, i, h1, h2 = rows
    assert g["makespan"] == 33 and f["makespan"] == 33      # (m+p-1)(F+B+W)
    assert g["peak_mem"][0] == 8 and f["peak_mem"][0] == 4  # m*M_B, p*M_B
    assert i["virtual"] == 2 and i["stages"] == 8
    # m*v*(f+b) + (p-1)(f+b) with f = 0.5, b = 1 per virtual stage
    assert i["makespan"] == 8 * 2 * 1.5 + 3 * 1.5
    assert h2["makespan"] == 8 * 3 + 3  # the lower bound m(F+B+W) + (p-1)F
    assert h1["tasks"] == 96 and g["tasks"] == 64


def checkpoint_memory():
    # torch Pipe's modes: never keeps m microbatches (GPipe), always one.
    peaks = {}
    for mode in ("never", "except_last", "always"):
        r = json.loads(run("--schedule", "gpipe", "--devices", "4", "--microbatches", "8",
                           "--checkpoint", mode, "--json").stdout)
        assert r["checkpoint"] == mode and r["makespan"] == 33, r
        peaks[mode] = r["peak_mem"][0]
    assert peaks == {"never": 8, "except_last": 2, "always": 1}, peaks


def table():
    out = run("--schedule", "gpipe,1f1b", "--devices", "2", "--microbatches", "4").stdout
    lines = out.splitlines()
    assert lines[0].split()[0] == "schedule" and "bubble" in lines[0]
    assert lines[1].split()[0] == "gpipe" and lines[2].split()[0] == "1f1b"


def costs_and_comm():
    r = json.loads(run("--schedule", "1f1b", "--devices", "3", "--microbatches", "6",
                       "--cost", "F=2,B=3,W=1", "--json").stdout)
    assert r["makespan"] == (6 + 3 - 1) * 6
    r2 = json.loads(run("--schedule", "1f1b", "--devices", "3", "--microbatches", "6",
                        "--cost", "F=2,B=3,W=1", "--comm", "0.5", "--json").stdout)
    assert r2["makespan"] > r["makespan"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "costs.csv")
        with open(path, "w") as fh:
            fh.write("# stage,F,B,W\n0,1,1,1\n1,2,2,2\n2,1,1,1\n")
        r3 = json.loads(run("--schedule", "gpipe", "--devices", "3", "--microbatches", "4",
                            "--stage-costs", path, "--json").stdout)
        # The slow middle stage dominates: every device's busy time is exact.
        assert r3["busy"] == [12, 24, 12], r3["busy"]
        with open(path, "w") as fh:
            fh.write("0,1,1,1\n1,x,2,2\n")
        p = run("--schedule", "gpipe", "--devices", "3", "--stage-costs", path, ok=False)
        assert "line 2" in p.stderr, p.stderr


def dump_and_reload():
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "plan.csv")
        run("--schedule", "zb-h1,interleaved", "--devices", "4", "--microbatches", "8",
            "--dump-plan", base)
        for name in ("zb-h1", "interleaved"):
            path = os.path.join(d, f"plan.{name}.csv")
            assert os.path.exists(path), path
            a = json.loads(run("--schedule", name, "--devices", "4", "--microbatches", "8",
                               "--json").stdout)
            b = json.loads(run("--schedule", path, "--json").stdout)
            for k in ("makespan", "busy", "peak_mem", "tasks", "stages", "lower_bound"):
                assert a[k] == b[k], (name, k, a[k], b[k])


def trace_and_svg():
    with tempfile.TemporaryDirectory() as d:
        tr, svg = os.path.join(d, "t.json"), os.path.join(d, "t.svg")
        run("--schedule", "gpipe,zb-h2", "--devices", "4", "--microbatches", "8",
            "--trace", tr, "--svg", svg)
        events = json.load(open(tr))["traceEvents"]
        slices = [e for e in events if e.get("ph") == "X"]
        assert len(slices) == 64 + 96
        assert {e["pid"] for e in slices} == {1, 2}
        assert {e["tid"] for e in slices} == {0, 1, 2, 3}
        assert any(e["name"] == "3F7" for e in slices)
        assert {e["cat"] for e in slices} == {"F", "B", "I", "W"}
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        texts = "".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
        assert "gpipe" in texts and "zb-h2" in texts


def plugin_and_auto():
    r = json.loads(run("--schedule", PLUGIN, "--devices", "4", "--microbatches", "8",
                       "--json").stdout)
    assert r["schedule"] == "looped-bfs" and r["virtual"] == 2 and r["tasks"] == 128
    free = json.loads(run("--schedule", "auto", "--devices", "4", "--microbatches", "8",
                          "--json").stdout)
    tight = json.loads(run("--schedule", "auto", "--devices", "4", "--microbatches", "8",
                           "--mem-limit", "2", "--json").stdout)
    assert max(tight["peak_mem"]) <= 2 and tight["makespan"] >= free["makespan"]
    p = run("--schedule", "auto", "--mem-limit", "0.5", ok=False)
    assert "limit" in p.stderr, p.stderr


def errors():
    cases = [
        (["--schedule", "nope"], "unknown schedule 'nope'"),
        (["--schedule", "interleaved", "--devices", "4", "--microbatches", "6"],
         "multiple of devices"),
        (["--schedule", "1f1b", "--virtual", "2"], "one stage per device"),
        (["--schedule", "/nonexistent/x.so"], "cannot load schedule plugin"),
        (["--schedule", "/nonexistent/x.csv"], "cannot open plan file"),
        (["--devices", "zero"], "--devices needs a whole number"),
        (["--cost", "Q=1"], "not KEY=VALUE"),
        (["--backend", "opencl"], "not available"),
        (["--backend", "synthetic", "--runtime-mode", "x"], "--runtime-mode is"),
        (["--bogus"], "unknown option"),
        (["--placement", "0,1,9,3"], "--placement"),
    ]
    for args, needle in cases:
        p = run(*args, ok=False)
        assert needle in p.stderr, (args, p.stderr)
        assert p.stdout.strip() == "" or "schedule" in p.stdout.splitlines()[0]


def docs_plugin_example():
    """The plugin in docs/schedules.md compiles as shown, as C and C++."""
    import re
    doc = open(os.path.join(SOURCE_DIR, "docs", "schedules.md")).read()
    code = re.search(r"```c\n(.*?)```", doc, re.S).group(1)
    inc = os.path.join(SOURCE_DIR, "include")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "my_gpipe.c")
        open(src, "w").write(code)
        for cc, lang in (("cc", []), ("c++", ["-x", "c++"])):
            so = os.path.join(d, f"my_gpipe_{cc}.so")
            subprocess.run([cc, *lang, "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                            "-fvisibility=hidden", "-I", inc, src, "-o", so], check=True)
            r = json.loads(run("--schedule", so, "--json").stdout)
            assert r["schedule"] == "my-gpipe" and r["makespan"] == 33, r
            p = run("--schedule", so, "--virtual", "2", ok=False)
            assert "my-gpipe needs v=1 (got v=2)" in p.stderr, p.stderr


def synthetic_backend():
    """The real runtime with timed tasks: every schedule runs, its measured
    makespan is reported next to the simulated one and cannot beat it."""
    out = run("--backend", "synthetic", "--schedule", "gpipe,1f1b,zb-h1",
              "--devices", "2", "--microbatches", "4", "--unit-us", "300",
              "--repeat", "1", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["schedule"] for r in rows] == ["gpipe", "1f1b", "zb-h1"]
    for r in rows:
        assert r["backend"] == "synthetic" and r["unit_us"] == 300
        # Tasks take at least their cost, so no step beats the simulation.
        assert r["makespan"] >= r["sim_makespan"] * 0.999, r
        assert abs(r["makespan_us"] - r["makespan"] * 300) < 1e-6 * r["makespan_us"]
        assert len(r["busy"]) == 2 and all(b > 0 for b in r["busy"])
    with tempfile.TemporaryDirectory() as d:
        svg, tr = os.path.join(d, "s.svg"), os.path.join(d, "s.json")
        run("--backend", "synthetic", "--schedule", "1f1b", "--devices", "2",
            "--microbatches", "2", "--unit-us", "200", "--repeat", "1",
            "--svg", svg, "--trace", tr)
        names = {e["args"]["name"] for e in json.load(open(tr))["traceEvents"]
                 if e.get("name") == "process_name"}
        assert any("(sim)" in n for n in names) and any("(synthetic)" in n for n in names), names
        ET.parse(svg)
    p = run("--backend", "synthetic", "--task-mode", "nap", ok=False)
    assert "--task-mode is sleep or spin" in p.stderr, p.stderr


def overhead_subcommand():
    for shape in ("chain", "independent", "gpipe", "1f1b"):
        for mode in ("pool", "dedicated"):
            r = json.loads(subprocess.run(
                [BENCH, "overhead", "--shape", shape, "--devices", "4",
                 "--microbatches", "8", "--threads", "2", "--repeat", "5",
                 "--mode", mode, "--json"],
                capture_output=True, text=True, timeout=60, check=True).stdout)
            assert r["runtime"] == "baton" and r["violations"] == 0, r
            assert r["tasks"] == (64 if shape in ("gpipe", "1f1b") else 32), r
            assert r["run_ns_per_task"] > 0 and r["build_ns_per_task"] > 0
    p = subprocess.run([BENCH, "overhead", "--shape", "star"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "unknown shape" in p.stderr, p.stderr


check("json_fields", json_fields)
check("synthetic_backend", synthetic_backend)
check("overhead_subcommand", overhead_subcommand)
check("docs_plugin_example", docs_plugin_example)
check("checkpoint_memory", checkpoint_memory)
check("table", table)
check("costs_and_comm", costs_and_comm)
check("dump_and_reload", dump_and_reload)
check("trace_and_svg", trace_and_svg)
check("plugin_and_auto", plugin_and_auto)
check("errors", errors)
print(f"{passed} passed, {failures} failed")
sys.exit(1 if failures else 0)
