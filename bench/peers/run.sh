#!/usr/bin/env bash
# Runs baton's `baton-bench overhead` and the peer runtimes (oneTBB flow
# graph, OpenMP tasks, StarPU) on the same DAG with the same empty tasks and
# prints one table.
#
#   bench/peers/run.sh [--shape S] [--devices P] [--microbatches M]
#                      [--threads T] [--repeat R]
#
# Defaults: --shape gpipe --devices 8 --microbatches 64 --threads 2
# --repeat 200.  Installs libtbb-dev / libstarpu-dev when missing, builds
# the peers into build-peers/, keeps the raw JSON lines in
# build-peers/overhead-SHAPE-P-M-T.jsonl.  Exits 1 if any program failed
# or reported violations.  Env: BATON_BENCH (baton's binary, default
# build/bench/baton-bench), BATON_PEER_TIMEOUT (seconds per program, 120),
# BATON_PEER_STARPU_SCHED (StarPU scheduler, default lws).
set -u -o pipefail

shape=gpipe devices=8 microbatches=64 threads=2 repeat=200
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shape=${2:?--shape needs a value}; shift 2 ;;
    --devices) devices=${2:?--devices needs a value}; shift 2 ;;
    --microbatches) microbatches=${2:?--microbatches needs a value}; shift 2 ;;
    --threads) threads=${2:?--threads needs a value}; shift 2 ;;
    --repeat) repeat=${2:?--repeat needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 2
bdir=build-peers
args=(--shape "$shape" --devices "$devices" --microbatches "$microbatches"
      --threads "$threads" --repeat "$repeat" --json)
per_run_timeout=${BATON_PEER_TIMEOUT:-120}

# ---- packages -----------------------------------------------------------
missing=()
for pkg in libtbb-dev libstarpu-dev; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo=sudo; fi
  echo "run.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y "${missing[@]}" >&2; then
    $sudo apt-get update >&2 && $sudo apt-get install -y "${missing[@]}" >&2 ||
      echo "run.sh: could not install ${missing[*]}; building what is there" >&2
  fi
fi

# ---- build --------------------------------------------------------------
mkdir -p "$bdir"
if ! { cmake -S bench/peers -B "$bdir" -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$bdir" -j 2; } >"$bdir/build.log" 2>&1; then
  cat "$bdir/build.log" >&2
  echo "run.sh: building the peers failed" >&2
  exit 2
fi

# ---- runs ---------------------------------------------------------------
out="$bdir/overhead-$shape-$devices-$microbatches-$threads.jsonl"
: >"$out"
notes=()
status=0

# StarPU: quiet, no calibration or bus sampling, no binding, and its files
# in a temporary directory (never $HOME or the repository).
starpu_home=$(mktemp -d "${TMPDIR:-/tmp}/baton-peers-starpu.XXXXXX")
trap 'rm -rf "$starpu_home"' EXIT
export STARPU_HOME="$starpu_home" STARPU_SILENT=1 STARPU_CALIBRATE=0 \
  STARPU_BUS_STATS=0 STARPU_WORKERS_NOBIND=1 STARPU_NCPU="$threads" \
  STARPU_NCUDA=0 STARPU_NOPENCL=0 STARPU_PROFILING=0 STARPU_FXT_TRACE=0

# run NAME CMD...: appends the program's JSON line(s) to $out.
run() {
  local name=$1 line rc
  shift
  line=$(timeout "$per_run_timeout" "$@" 2>"$bdir/$name.stderr")
  rc=$?
  line=$(printf '%s\n' "$line" | grep '^{.*"run_ns_per_task"' || true)
  if [ -z "$line" ]; then
    notes+=("$name: no result (exit $rc; see $bdir/$name.stderr)")
    status=1
    return 1
  fi
  printf '%s\n' "$line" >>"$out"
  if [ "$rc" != 0 ]; then
    notes+=("$name: exit $rc")
    status=1
  fi
  return 0
}

baton=${BATON_BENCH:-build/bench/baton-bench}
if [ -x "$baton" ]; then
  # Supported when it prints a JSON line for the subcommand; a binary
  # whose --help mentions 'overhead' but prints none has failed.
  if ! run baton "$baton" overhead "${args[@]}" &&
     ! "$baton" --help 2>&1 | grep -q overhead; then
    unset 'notes[${#notes[@]}-1]'
    status=0
    notes+=("baton: $baton has no 'overhead' subcommand yet; skipped")
  fi
else
  notes+=("baton: $baton not built; skipped (cmake --build build)")
fi
# A fresh STARPU_HOME makes starpu_init sample the bus, which slows the
# rest of that process (build ~2.5x); populate it with one tiny untimed run.
if [ -x "$bdir/peer-starpu" ]; then
  timeout "$per_run_timeout" "$bdir/peer-starpu" --shape chain --devices 1 \
    --microbatches 1 --threads "$threads" --repeat 1 >/dev/null 2>&1 || true
fi
for peer in tbb openmp starpu; do
  if [ -x "$bdir/peer-$peer" ]; then
    run "$peer" "$bdir/peer-$peer" "${args[@]}"
  else
    notes+=("$peer: not built (dependency missing; see $bdir/build.log)")
  fi
done

# ---- table --------------------------------------------------------------
echo "overhead: shape $shape, P=$devices, M=$microbatches, T=$threads," \
  "R=$repeat (medians; raw JSON in $out)"
python3 - "$out" "${notes[@]+"${notes[@]}"}" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
notes = sys.argv[2:]
base = next((r for r in rows if r.get("runtime") == "baton"), None)
# The first baton line is the baseline (baton may print one per mode).
hdr = ("runtime", "tasks", "build ns/task", "run ns/task", "run / baton")
table = []
for r in rows:
    run = float(r["run_ns_per_task"])
    build = float(r["build_ns_per_task"])
    ratio = "-"
    if base is not None and float(base["run_ns_per_task"]) > 0:
        ratio = "%.2fx" % (run / float(base["run_ns_per_task"]))
    bs = "%.1f" % build
    if "build_note" in r:
        bs = "-"
        notes.append("%s: build: %s" % (r["runtime"], r["build_note"]))
    name = r["runtime"] + ("/" + r["mode"] if "mode" in r else "")
    table.append((name, str(r["tasks"]), bs, "%.1f" % run, ratio))
    if int(r.get("violations", 0)) != 0:
        notes.append("%s: %d violations" % (r["runtime"], int(r["violations"])))
w = [max(len(x[i]) for x in [hdr] + table) for i in range(len(hdr))]
fmt = lambda x: "  ".join(
    (c.ljust(w[i]) if i == 0 else c.rjust(w[i])) for i, c in enumerate(x))
print(fmt(hdr))
print("  ".join("-" * n for n in w))
for x in table:
    print(fmt(x))
for n in notes:
    print("note: " + n)
EOF
[ $? -eq 0 ] || status=1
exit $status
