"""Files decode anywhere: compress in this process, decompress in fresh processes that pick other kernels.

    python -m benchmarks.codec_portability [--digits 500] [--models mnist,mnist_mar] [--batch-sizes 512]

Compresses the first --digits held-out MNIST digits (with their labels for `mnist`, without for
`mnist_mar`) with 2 threads, then decodes every file in a fresh process per variant: torch's CPU
kernels at another SIMD level (ATEN_CPU_CAPABILITY), MKL's and oneDNN's at another instruction
set, and 1, 2 or 4 threads, each at every decoder batch size asked. A variant passes when every
file decodes to the original pixels (the codec also checks them against the file's checksum).
tests/core/test_codec.py runs the same on a few digits and the tiny models.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fractalgen
from fractalgen import codec
from fractalgen.data import mnist_split

# (name, environment, threads): each a way another machine may compute the same float64 logits.
VARIANTS = [
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, 1),
    ("ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, 4),
    ("ATEN_CPU_CAPABILITY=avx512", {"ATEN_CPU_CAPABILITY": "avx512"}, 2),
    ("MKL_ENABLE_INSTRUCTIONS=SSE4_2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "MKL_CBWR": "COMPATIBLE"}, 2),
    ("MKL_ENABLE_INSTRUCTIONS=AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1),
    ("ONEDNN_MAX_CPU_ISA=AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 4),
]


def cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def variants() -> list[tuple[str, dict, int]]:
    """The variants this CPU can run (AVX-512 kernels only where the CPU has them)."""
    return [v for v in VARIANTS if "avx512" not in v[0] or cpu_has_avx512()]


def write_case(folder: Path, name: str, model, images: torch.Tensor, labels, batch_size: int,
               images_per_stream: int) -> dict:
    """Compress `images` with `model` into folder/NAME.fgz, beside the model's weights and the pixels."""
    fractalgen.save(model, folder / f"{name}.safetensors")
    started = time.perf_counter()
    data = codec.compress(model, images, labels, batch_size=batch_size, images_per_stream=images_per_stream)
    seconds = time.perf_counter() - started
    (folder / f"{name}.fgz").write_bytes(data)
    np.save(folder / f"{name}.npy", images.numpy())
    return {"name": name, "images": int(images.shape[0]), "bytes": len(data), "encode_s": seconds}


def decode_cases(folder: Path, names: list[str], batch_sizes: list[int]) -> list[dict]:
    """Decode every case at every batch size in this process: one result per (case, batch size)."""
    results = []
    for name in names:
        model = fractalgen.load(str(folder / f"{name}.safetensors"))
        data = (folder / f"{name}.fgz").read_bytes()
        original = torch.from_numpy(np.load(folder / f"{name}.npy"))
        for batch_size in batch_sizes:
            started = time.perf_counter()
            try:
                ok = torch.equal(codec.decompress(model, data, batch_size=batch_size), original)
                error = None
            except codec.CodecError as e:
                ok, error = False, str(e)
            results.append({"name": name, "batch_size": batch_size, "ok": ok, "error": error,
                            "decode_s": time.perf_counter() - started})
    return results


def decode_elsewhere(folder: Path, names: list[str], batch_sizes: list[int], environment: dict, threads: int,
                     timeout: float = 3600) -> list[dict]:
    """decode_cases in a fresh process with `environment` set and `threads` torch threads."""
    command = [sys.executable, "-m", "benchmarks.codec_portability", "--decode-worker", str(folder),
               "--models", ",".join(names), "--batch-sizes", ",".join(map(str, batch_sizes)),
               "--threads", str(threads)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **environment, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"decoder process failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=int, default=500)
    parser.add_argument("--models", default="mnist,mnist_mar")
    parser.add_argument("--batch-sizes", default=str(codec.DEFAULT_BATCH), help="decoder batch sizes, comma-separated")
    parser.add_argument("--encode-batch-size", type=int, default=codec.DEFAULT_BATCH)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.decode_worker:
        print(json.dumps(decode_cases(Path(args.decode_worker), names, batch_sizes)))
        return
    digits, labels = mnist_split("val")
    images = torch.from_numpy(digits[:args.digits])[:, None]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        written = [write_case(folder, name, fractalgen.load(name), images,
                              torch.from_numpy(labels[:args.digits]).long() if name == "mnist" else None,
                              args.encode_batch_size, codec.IMAGES_PER_STREAM) for name in names]
        for case in written:
            print(f"{case['name']}: {case['images']} digits, {case['bytes']} bytes, "
                  f"encoded in {case['encode_s']:.1f} s "
                  f"({1000 * case['encode_s'] / case['images']:.1f} ms/digit, {args.threads} threads)")
        print("\n| variant | threads | model | batch | decoded exactly | ms/digit |\n|---|---|---|---|---|---|")
        failures = 0
        for variant, environment, threads in variants():
            for result in decode_elsewhere(folder, names, batch_sizes, environment, threads):
                failures += not result["ok"]
                print(f"| {variant} | {threads} | {result['name']} | {result['batch_size']} | "
                      f"{'yes' if result['ok'] else 'NO: ' + str(result['error'])} | "
                      f"{1000 * result['decode_s'] / args.digits:.1f} |", flush=True)
    print(f"\n{failures} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
