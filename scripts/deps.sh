#!/usr/bin/env bash
# Installs the Debian packages baton needs to build and test, if missing.
# Idempotent: does nothing (and needs no network) when all are present.
#   --demo  also what the demos need beyond the build and tests:
#           python3-sklearn, whose bundled 8x8 digits data set
#           scripts/digits.py converts for baton-train, and fortunes,
#           English fortune cookies (text files under
#           /usr/share/games/fortunes), the GPT's default byte-level
#           corpus (model/text.h).  No download at run time.
set -euo pipefail

# OpenMPI (openmpi-bin for mpirun, libopenmpi-dev to build the transport):
# the tests run jobs of 2 and 4 processes.
packages=(gcc g++ make cmake pkg-config python3 libjemalloc-dev libjansson-dev
  libopenblas-dev openmpi-bin libopenmpi-dev)
demo_packages=(python3-sklearn fortunes)

for arg in "$@"; do
  case "$arg" in
    --demo) packages+=("${demo_packages[@]}") ;;
    *) echo "deps: unknown option '$arg'; usage: deps.sh [--demo]" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
