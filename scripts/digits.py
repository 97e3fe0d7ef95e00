#!/usr/bin/env python3
"""Converts the 8x8 hand-written digits shipped inside Debian's python3-sklearn
(sklearn/datasets/data/digits.csv.gz) into data/digits.safetensors for
baton-train: x [1797, 64] F32 (pixel counts 0..16 scaled to [0, 1] by /16),
y [1797] I32 (the digit).  No download and no numpy: the csv.gz is read with
gzip + csv and the safetensors bytes are written with struct + json.

usage: scripts/digits.py [OUT]   (default: data/digits.safetensors in the
repository).  Install the source with `bash scripts/deps.sh --demo`."""
import csv
import glob
import gzip
import io
import json
import os
import struct
import subprocess
import sys

REL = os.path.join("datasets", "data", "digits.csv.gz")


def find_csv():
    """The csv.gz from the sklearn this Python imports, else from the Debian
    package's file list, else from the usual Debian location."""
    candidates = []
    try:
        import sklearn  # noqa: PLC0415 - optional

        candidates.append(os.path.join(os.path.dirname(sklearn.__file__), REL))
    except Exception:  # noqa: BLE001 - any failure: try the other ways
        pass
    try:
        out = subprocess.run(["dpkg", "-L", "python3-sklearn"], capture_output=True,
                             text=True, check=False).stdout
        candidates += [line for line in out.splitlines()
                       if line.endswith(os.path.join("sklearn", REL))]
    except OSError:
        pass
    candidates += sorted(glob.glob("/usr/lib/python3*/dist-packages/sklearn/" + REL))
    for c in candidates:
        if os.path.isfile(c):
            return c
    return None


def read_digits(path):
    xs, ys = [], []
    with gzip.open(path, "rt", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 65:
                raise ValueError(f"{path} line {lineno}: {len(row)} fields, expected 65")
            pixels = [float(v) for v in row[:64]]
            label = int(float(row[64]))
            if not 0 <= label <= 9 or any(not 0 <= v <= 16 for v in pixels):
                raise ValueError(f"{path} line {lineno}: value out of range")
            xs.append([v / 16.0 for v in pixels])
            ys.append(label)
    return xs, ys


def safetensors_bytes(tensors, metadata):
    """tensors: list of (name, dtype, shape, raw bytes), stored in order."""
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    out = io.BytesIO()
    out.write(struct.pack("<Q", len(text)))
    out.write(text)
    for _, _, _, raw in tensors:
        out.write(raw)
    return out.getvalue()


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "data",
                                                               "digits.safetensors")
    src = find_csv()
    if src is None:
        sys.exit("digits.py: sklearn's digits.csv.gz not found; install it with "
                 "`bash scripts/deps.sh --demo` (Debian's python3-sklearn)")
    xs, ys = read_digits(src)
    n = len(ys)
    flat = [v for row in xs for v in row]
    tensors = [("x", "F32", (n, 64), struct.pack(f"<{len(flat)}f", *flat)),
               ("y", "I32", (n,), struct.pack(f"<{n}i", *ys))]
    metadata = {
        "source": "sklearn/datasets/data/digits.csv.gz (Debian python3-sklearn): "
                  "the test set of the UCI ML Optical Recognition of Handwritten "
                  "Digits data set, E. Alpaydin and C. Kaynak, 1998",
        "license": "UCI ML repository data set, CC BY 4.0; redistributed by "
                   "scikit-learn (BSD-3-Clause). Not part of baton's sources.",
        "transform": "x = pixel count (0..16) / 16, y = digit",
    }
    data = safetensors_bytes(tensors, metadata)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    print(f"digits.py: wrote {dest} ({n} rows from {src})")


if __name__ == "__main__":
    main()
