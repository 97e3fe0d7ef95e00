#!/usr/bin/env python3
"""baton-train across processes (issue 8), end to end under mpirun.

  1. For gpipe, 1f1b and zb-h1, with 2 and 4 ranks: resmlp with --long-skip
     (the skip crosses ranks), resmlp with --dp 2 (the all-reduce crosses
     ranks) and gpt (tied wte across the first and the last rank, --dp 2)
     write a --dump byte-identical to one process's, and
     a few steps later report the same loss (and, for gpt, validation
     perplexity and sampled text).
  2. A checkpoint saved by 4 ranks (shards + index) loads in one process
     and in 2 ranks, and gives the same model.
  3. Faults: a rank killed mid-step ends the job, the others naming what
     they waited for; a rank that stops answering makes the others time
     out (--comm-timeout) with the task and the rank named.

usage: mpi_cli.py BATON_TRAIN MPIRUN"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

TRAIN, MPIRUN = sys.argv[1], sys.argv[2]
MPI = [MPIRUN, "--oversubscribe", "--allow-run-as-root"]
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)


def run(args, np=1, timeout=120):
    cmd = (MPI + ["-np", str(np)] if np > 1 else []) + [TRAIN] + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV,
                       timeout=timeout)
    if p.returncode != 0:
        print("command:", " ".join(cmd), "\nstderr:", p.stderr[-2000:])
    return p


def devices(n, np):
    """n job devices over np ranks, names local to each rank."""
    per = n // np
    return ",".join("cpu:%d" % (i % per) for i in range(n))


def same_bytes(a, b):
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


def configs(tmp):
    text = os.path.join(tmp, "text.txt")
    words = ("the pipeline keeps every device busy while the schedule "
             "orders each microbatch").split()
    with open(text, "w") as f:
        f.write(" ".join(words[(i * 7) % len(words)] for i in range(4000)))
    resmlp = ["--data", "synthetic", "--long-skip", "--layers", "4",
              "--hidden", "16", "--batch", "16", "--microbatches", "4",
              "--balance", "2,1,1,2"]
    gpt = ["--model", "gpt", "--data", text, "--layers", "2", "--embd", "16",
           "--heads", "2", "--seq", "8", "--batch", "8", "--microbatches",
           "2", "--dp", "2", "--generate", "24"]
    # One replica of 4 stages: the tied wte spans the job's first and last
    # rank (with 2 ranks and with 4).
    gpt_tie = ["--model", "gpt", "--data", text, "--layers", "2", "--embd",
               "16", "--heads", "2", "--seq", "8", "--batch", "8",
               "--microbatches", "4", "--generate", "24"]
    # Two replicas of two stages: with 2 ranks each rank a replica, with 4
    # the replicas' all-reduce and the pipeline's edges both cross ranks.
    resmlp_dp = ["--data", "synthetic", "--long-skip", "--layers", "2",
                 "--hidden", "16", "--batch", "16", "--microbatches", "2",
                 "--dp", "2", "--balance", "2,2"]
    return {"resmlp": resmlp, "resmlp-dp": resmlp_dp, "gpt": gpt,
            "gpt-tie": gpt_tie}


def test_equal_to_one_process(tmp):
    for name, base in configs(tmp).items():
        for sched in ("gpipe", "1f1b", "zb-h1"):
            args = base + ["--schedule", sched, "--steps", "3", "--json"]
            ref_dump = os.path.join(tmp, "%s-%s-1.st" % (name, sched))
            ref = run(args + ["--devices", devices(4, 1), "--dump", ref_dump])
            check(ref.returncode == 0, "%s %s one process" % (name, sched))
            if ref.returncode != 0:
                continue
            want = json.loads(ref.stdout)
            for np in (2, 4):
                dump = os.path.join(tmp, "%s-%s-%d.st" % (name, sched, np))
                got = run(args + ["--devices", devices(4, np), "--dump", dump],
                          np=np)
                what = "%s %s -np %d" % (name, sched, np)
                check(got.returncode == 0, what + " ran")
                if got.returncode != 0:
                    continue
                check(same_bytes(ref_dump, dump),
                      what + ": the dump differs from one process's")
                out = json.loads(got.stdout)
                for key in ("loss", "first_loss", "val_ppl", "generated",
                            "accuracy"):
                    if key in want:
                        check(out.get(key) == want[key],
                              "%s: %s %r vs %r" % (what, key, out.get(key),
                                                   want[key]))
        # Random sleeps in every stage callback (--perturb) reorder the
        # transfers; the bits must not move.
        if name == "gpt":
            args = base + ["--schedule", "zb-h1", "--steps", "3", "--json"]
            ref = run(args + ["--devices", devices(4, 1)])
            got = run(args + ["--devices", devices(4, 4), "--perturb", "5"],
                      np=4)
            check(ref.returncode == 0 and got.returncode == 0 and
                  json.loads(got.stdout)["loss"] ==
                  json.loads(ref.stdout)["loss"],
                  "gpt zb-h1 -np 4 --perturb: the loss moved")
    print("equal to one process: done", flush=True)


def test_job_timeline(tmp):
    """--trace under 2 ranks holds every device's tasks, and the peak
    activation bytes cover every device."""
    trace = os.path.join(tmp, "job.json")
    args = configs(tmp)["resmlp"] + ["--schedule", "1f1b", "--steps", "2",
                                     "--json", "--trace", trace,
                                     "--devices", devices(4, 2)]
    got = run(args, np=2)
    check(got.returncode == 0, "resmlp -np 2 --trace ran")
    if got.returncode != 0:
        return
    events = json.load(open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    tids = {e.get("tid") for e in events if "dur" in e}
    check(tids >= {0, 1, 2, 3}, "the timeline has every device: %r" % tids)
    out = json.loads(got.stdout)
    check(all(b > 0 for b in out["peak_activation_bytes"]) and
          out["peak_activation_bytes"] == out["sim_peak_activation_bytes"],
          "every device's peak is measured and equals the simulated one")
    print("job timeline: done", flush=True)


def test_checkpoint_shards(tmp):
    gpt = configs(tmp)["gpt"]
    ckpt = os.path.join(tmp, "ckpt.st")
    saved = run(gpt + ["--steps", "4", "--json", "--devices", devices(4, 4),
                       "--save", ckpt], np=4)
    check(saved.returncode == 0, "4 ranks save")
    if saved.returncode != 0:
        return
    index = json.load(open(ckpt))
    check(index.get("format") == "baton-sharded" and index.get("ranks") == 4,
          "the index names its format and ranks")
    shards = set(index["weight_map"].values())
    check(all(os.path.exists(os.path.join(tmp, s)) for s in shards),
          "every shard the index names exists")
    want = json.loads(saved.stdout)["val_ppl"]
    one = run(gpt + ["--steps", "0", "--json", "--load", ckpt, "--devices",
                     devices(4, 1)])
    check(one.returncode == 0 and json.loads(one.stdout)["val_ppl"] == want,
          "one process loads the 4-rank checkpoint")
    two = run(gpt + ["--steps", "1", "--json", "--load", ckpt, "--devices",
                     devices(4, 2)], np=2)
    check(two.returncode == 0, "2 ranks load the 4-rank checkpoint")
    print("checkpoint shards: done", flush=True)


def rank_pid(rank):
    """The pid of baton-train's rank `rank` (from its environment)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read()
            env = open("/proc/%s/environ" % pid, "rb").read()
        except OSError:
            continue
        # This run's binary and a marker only this test's job carries (other
        # jobs may run beside it, e.g. CI's sanitizer builds).
        if (os.path.realpath(cmd.split(b"\0")[0].decode(errors="replace")) ==
                os.path.realpath(TRAIN) and
                b"OMPI_COMM_WORLD_RANK=%d\0" % rank in env and
                b"BATON_MPI_CLI=%d\0" % os.getpid() in env):
            return int(pid)
    return None


def fault(sig, timeout_s):
    gpt = configs(tempfile.gettempdir())["gpt"]
    args = gpt + ["--steps", "1000000", "--generate", "0", "--devices",
                  devices(4, 2), "--comm-timeout", str(timeout_s)]
    env = dict(ENV, BATON_MPI_CLI=str(os.getpid()))
    p = subprocess.Popen(MPI + ["-np", "2", "-x", "BATON_MPI_CLI", TRAIN] + args,
                         env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    pid = None
    for _ in range(100):
        time.sleep(0.1)
        pid = rank_pid(1)
        if pid is not None:
            break
    time.sleep(1.0)  # well into training
    if pid is None:
        p.kill()
        check(False, "found no rank 1 to stop")
        return None, None
    t0 = time.time()
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        p.kill()
        p.communicate()
        check(False, "rank 1 (pid %d) ended before the signal" % pid)
        return None, None
    try:
        _, err = p.communicate(timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        check(False, "the job did not end after rank 1 got signal %d" % sig)
        return None, err
    if sig == signal.SIGSTOP:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return time.time() - t0, err


def test_faults():
    took, err = fault(signal.SIGKILL, 60)
    if took is not None:
        check(took < 30, "killing rank 1 ended the job in %.1f s" % took)
        check("rank 0:" in err and ("waiting for" in err or "failed" in err),
              "rank 0 names what it waited for: " + err[-600:])
    took, err = fault(signal.SIGSTOP, 3)
    if took is not None:
        check(took < 25, "a stopped rank 1 ended the job in %.1f s" % took)
        # Rank 0 waits either for a message from rank 1 or, at the step's
        # end, for rank 1 to take one of its sends; both name rank 1.
        check("rank 0:" in err and "timed out after 3 s waiting for" in err
              and ("from rank 1" in err or "rank 1 to receive" in err),
              "rank 0 timed out naming the task and rank 1: " + err[-1500:])
    print("faults: done", flush=True)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        test_equal_to_one_process(tmp)
        test_job_timeline(tmp)
        test_checkpoint_shards(tmp)
    test_faults()
    if FAILURES:
        print("%d failure(s)" % len(FAILURES))
        sys.exit(1)
    print("all passed")


main()
