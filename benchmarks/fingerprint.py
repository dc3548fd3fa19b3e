"""Fingerprints of seeded outputs of both bundled models, to show that a change of structure leaves
what users get byte-identical: samples, inpaintings, codec files and bits/dim, through the library
and the command line. Prints one JSON object of SHA-256 prefixes; compare two runs with --compare.

    python -m benchmarks.fingerprint --out before.json
    python -m benchmarks.fingerprint --compare before.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import fractalgen


def digest(value) -> str:
    if isinstance(value, torch.Tensor):
        value = value.contiguous().numpy().tobytes()
    elif isinstance(value, float):
        value = repr(value).encode()
    return hashlib.sha256(value).hexdigest()[:16]


def library(name: str, digits: torch.Tensor, labels: torch.Tensor) -> dict:
    torch.set_num_threads(1)
    model = fractalgen.load(name)
    known = torch.zeros(digits.shape[-2:], dtype=torch.bool)
    known[:14] = True
    out = {
        "sample": digest(fractalgen.sample(model, labels=list(range(10)), seed=0, threads=1)),
        "inpaint": digest(fractalgen.inpaint(model, digits[:4], known, labels=labels[:4].tolist(), seed=1, threads=1)),
        "codec": digest(fractalgen.compress(model, digits[:12], labels=labels[:12], threads=1)),
        "bits_per_dim": digest(fractalgen.nll_per_image(model, digits[:16], labels=labels[:16],
                                                          generator_seed=0)),
    }
    return out


def command_line(name: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        run = [sys.executable, "-m", "fractalgen", "sample", "--checkpoint", name, "--seed", "3", "--n", "4",
               "--threads", "1", "--out", str(Path(folder) / "out")]
        subprocess.run(run, check=True, capture_output=True)
        files = sorted(p for p in (Path(folder) / "out").rglob("*") if p.is_file())
        return {"cli_sample": digest(b"".join(p.name.encode() + p.read_bytes() for p in files))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the fingerprints here too")
    parser.add_argument("--compare", help="a JSON file of an earlier run: exit 1 when anything differs")
    args = parser.parse_args()
    digits, labels = fractalgen.mnist_heldout()
    result = {name: {**library(name, torch.as_tensor(digits), torch.as_tensor(labels)), **command_line(name)}
              for name in ("mnist", "mnist_mar")}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        changed = [f"{m}.{k}" for m in result for k in result[m] if before.get(m, {}).get(k) != result[m][k]]
        print("identical" if not changed else "changed: " + ", ".join(changed))
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
