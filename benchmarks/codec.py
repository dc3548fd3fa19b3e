"""Lossless compression of the 500 held-out MNIST digits: fractalgen's codec against PNG, WebP and JPEG-XL.

    python -m benchmarks.codec [--checkpoint mnist] [--threads 1] [--batch-size 512]

Reports, for the bundled model (or --checkpoint): the model's bits/dim, the bits/dim of the file,
bytes per image, and encode/decode time per image; the same bytes for optimised PNG (Pillow,
optimize=True, and zlib level 9 through imagecodecs), WebP-lossless (level 100, method 6) and
JPEG-XL lossless (effort 9), each per image (one file per digit) and for all 500 in one picture.
imagecodecs is a benchmark-only dependency: `pip install -e .[bench]`.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import time

import numpy as np
import torch
from PIL import Image

import fractalgen
from fractalgen import codec
from fractalgen.data import mnist_split


def png_pillow(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def baselines() -> dict:
    import imagecodecs

    return {
        "PNG (Pillow, optimize=True)": png_pillow,
        "PNG (imagecodecs, zlib level 9)": lambda x: imagecodecs.png_encode(x, level=9),
        "WebP lossless (level 100, method 6)": lambda x: imagecodecs.webp_encode(
            np.repeat(x[..., None], 3, -1), level=100, lossless=True, method=6),
        "JPEG-XL lossless (effort 9)": lambda x: imagecodecs.jpegxl_encode(x, lossless=True, effort=9),
    }


def check_lossless(name: str, encode, image: np.ndarray):
    """Every baseline must give back the digit exactly (else its size means nothing)."""
    import imagecodecs

    data = encode(image)
    decoded = np.asarray(Image.open(io.BytesIO(data))) if name.startswith("PNG (Pillow") else imagecodecs.imread(data)
    decoded = decoded[..., 0] if decoded.ndim == 3 else decoded
    assert np.array_equal(decoded, image), f"{name} is not lossless here"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="mnist")
    parser.add_argument("--threads", type=int, default=1, help="torch threads outside the codec (it runs on one)")
    parser.add_argument("--batch-size", type=int, default=codec.DEFAULT_BATCH)
    parser.add_argument("--single", type=int, default=20, help="digits also coded one file each (header included)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = fractalgen.load(args.checkpoint)
    digits, _ = mnist_split("val")  # (500, 28, 28) uint8, never trained on
    images = torch.from_numpy(digits)[:, None]
    n, dims = images.shape[0], images[0].numel()
    passes = 1 if set(model.config.kinds) == {"ar"} else 4  # MAR: the likelihood is a random-mask estimate
    model_bpd = float(fractalgen.nll_per_image(model, images, passes=passes, generator_seed=0).double().mean())

    started = time.time()
    data, bits = codec.encode(model, images, batch_size=args.batch_size)
    encode_s = time.time() - started
    started = time.time()
    decoded = fractalgen.decompress(model, data)
    decode_s = time.time() - started
    assert torch.equal(decoded, images), "round trip failed"
    code_bytes = float(bits.double().sum()) / 8
    payload = len(data) - codec.HEADER.size

    single = [len(fractalgen.compress(model, images[i:i + 1])) for i in range(args.single)]
    single_code = [float(b) / 8 for b in bits[:args.single].double().sum((1, 2, 3))]

    rows = {"fractalgen codec (one file, 500 digits)": len(data) / n}
    per_image = {}
    mosaic = digits.reshape(25, 20, 28, 28).transpose(0, 2, 1, 3).reshape(25 * 28, 20 * 28)  # all in one picture
    for name, encode in baselines().items():
        check_lossless(name, encode, digits[0])
        per_image[name] = float(np.mean([len(encode(d)) for d in digits]))
        rows[f"{name}, one file per digit"] = per_image[name]
        rows[f"{name}, all 500 in one picture"] = len(encode(mosaic)) / n

    result = {
        "checkpoint": args.checkpoint, "images": n, "model_bits_per_dim": model_bpd,
        "code_length_bytes": code_bytes, "file_bytes": len(data), "header_bytes": codec.HEADER.size,
        "payload_over_code_length": payload / code_bytes - 1, "file_bits_per_dim": 8 * len(data) / (n * dims),
        "bytes_per_image": len(data) / n, "encode_s_per_image": encode_s / n, "decode_s_per_image": decode_s / n,
        "decode_s_total": decode_s, "single_file_bytes_mean": float(np.mean(single)),
        "single_file_over_code_length_bytes": float(np.mean(np.array(single) - np.array(single_code))),
        "bytes_per_image_by_format": rows,
        "ratio_png_pillow": per_image["PNG (Pillow, optimize=True)"] / (len(data) / n),
        "ratio_webp": per_image["WebP lossless (level 100, method 6)"] / (len(data) / n),
        "ratio_jpegxl": per_image["JPEG-XL lossless (effort 9)"] / (len(data) / n),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"model: {args.checkpoint}, {model_bpd:.4f} bits/dim on {n} held-out digits ({passes} pass(es))")
    print(f"file: {len(data)} bytes = {result['file_bits_per_dim']:.4f} bits/dim; payload {payload} bytes vs code "
          f"length {code_bytes:.1f} bytes (+{100 * result['payload_over_code_length']:.3f}%), header "
          f"{codec.HEADER.size} bytes")
    print(f"encode {1000 * encode_s / n:.1f} ms/image, decode {1000 * decode_s / n:.1f} ms/image "
          f"({decode_s:.1f} s for {n}, batch {args.batch_size})")
    print(f"single-image files ({args.single} digits): {np.mean(single):.1f} bytes each, "
          f"{result['single_file_over_code_length_bytes']:.1f} bytes over the code length (header included)")
    print("\n| format | bytes/image | vs fractalgen |\n|---|---|---|")
    ours = len(data) / n
    for name, value in rows.items():
        print(f"| {name} | {value:.1f} | {value / ours:.2f}x |")
    print("\n" + json.dumps(result))


if __name__ == "__main__":
    main()
