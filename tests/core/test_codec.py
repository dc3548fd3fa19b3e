"""The lossless codec and per-pixel likelihood maps: round trips, errors on bad streams, maps vs bits/dim."""
import math
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from frame import DATA, TINY, run_cli, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

import fractalgen
from fractalgen import codec, heatmap
from fractalgen.data import mnist_split
from fractalgen.heatmap import heatmap_picture


@pytest.fixture(scope="module")
def mnist():
    return fractalgen.load("mnist")


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist_split("val")  # held out from training
    return torch.from_numpy(images[:5])[:, None], torch.from_numpy(labels[:5]).long()


@pytest.fixture(scope="module")
def stream(mnist, digits):
    """Five held-out digits with their labels, coded in batches of 3 (two batches) with two threads."""
    images, labels = digits
    with threads(2):
        return codec.compress(mnist, images, labels, batch_size=3)


@contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_threads", [1, 2])
def test_round_trip_is_bit_exact_with_labels_and_any_thread_count(mnist, digits, stream, num_threads):
    images, labels = digits
    with threads(num_threads):
        decoded, decoded_labels = fractalgen.decompress(mnist, stream, return_labels=True)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, images)
    assert torch.equal(decoded_labels, labels)


def test_file_size_is_the_code_length_plus_a_short_header(mnist, digits, stream):
    """Unconditional and class-conditional files cost what pixel_bits says, within 1%, plus the header."""
    images, labels = digits
    unconditional = fractalgen.compress(mnist, images[:2])
    assert torch.equal(fractalgen.decompress(mnist, unconditional), images[:2])
    for data, bits in ((unconditional, fractalgen.pixel_bits(mnist, images[:2])),
                       (stream, fractalgen.pixel_bits(mnist, images, labels))):
        code_bytes = float(bits.double().sum()) / 8 + (5 * math.log2(10) / 8 if data is stream else 0)
        assert codec.HEADER.size <= 64
        assert len(data) - codec.HEADER.size <= 1.01 * code_bytes + 4  # one range-coder word of slack


def tiny_images(n, seed=1):
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    images[1::2] = 255 - images[1::2] // 8  # not all noise
    return images


@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar", "tiny_mar_gp4"])
def test_round_trip_every_level_kind(name):
    """MAR levels (one token per step) and guiding pixels code and decode exactly too, with and without labels."""
    model = tiny_model(name, perturb=0.3)
    images = tiny_images(3)
    for labels in (None, torch.tensor([4, 0, 9])):
        data = fractalgen.compress(model, images, labels, batch_size=1, images_per_stream=2)
        decoded, decoded_labels = fractalgen.decompress(model, data, return_labels=True, batch_size=3)
        assert torch.equal(decoded, images)
        assert decoded_labels is None if labels is None else torch.equal(decoded_labels, labels)
        bits = fractalgen.pixel_bits(model, images, labels)
        label_bytes = 0 if labels is None else 3 * math.log2(10) / 8
        # Two streams: each ends with up to one 32-bit word beyond its code length.
        assert len(data) - codec.HEADER.size <= 1.01 * (float(bits.double().sum()) / 8 + label_bytes) + 2 * 4 + 8


def test_files_decode_bit_exact_under_other_kernels_threads_and_batch_sizes(tmp_path):
    """Encode here; decode in fresh processes that pick other SIMD levels, BLAS instruction sets,
    thread counts and batch sizes (what other machines do). Every level kind, with and without labels."""
    from benchmarks import codec_portability as portability

    digits, digit_labels = mnist_split("val")
    cases = [  # (name, model, images, labels, encoder batch size, images per stream)
        ("mnist", fractalgen.load("mnist"), torch.from_numpy(digits[:3])[:, None],
         torch.from_numpy(digit_labels[:3]).long(), 4, 2),
        ("mnist_mar", fractalgen.load("mnist_mar"), torch.from_numpy(digits[3:5])[:, None], None, 1, 2),
        ("tiny_ar", tiny_model("tiny_ar", perturb=0.3), tiny_images(3), torch.tensor([1, 2, 3]), 2, 2),
        ("tiny_mar", tiny_model("tiny_mar", perturb=0.3), tiny_images(2, seed=2), None, 512, 1),
        ("tiny_mar_gp4", tiny_model("tiny_mar_gp4", perturb=0.3), tiny_images(3, seed=3), torch.tensor([7, 7, 0]),
         1, 3),
    ]
    with threads(2):
        for name, model, images, labels, batch_size, per_stream in cases:
            portability.write_case(tmp_path, name, model, images, labels, batch_size, per_stream)
    names = [case[0] for case in cases]
    batch_sizes = ([1], [7], [512])
    failures = []
    for i, (variant, environment, num_threads) in enumerate(portability.variants()):
        for result in portability.decode_elsewhere(tmp_path, names, batch_sizes[i % 3], environment, num_threads,
                                                   timeout=300):
            if not result["ok"]:
                failures.append((variant, num_threads, result))
    assert failures == []


def test_rounding_hints_make_a_decoder_with_slightly_different_logits_exact(mnist, digits, monkeypatch):
    """A decoder whose float64 logits differ by less than MARGIN decodes exactly by following the
    encoder's hints; without them it rounds some logits the other way and fails the checksum."""
    monkeypatch.setattr(codec, "MARGIN", 2.0**-10)  # a quarter of a grid step: hints are frequent
    images, labels = digits[0][:2], digits[1][:2]
    data = fractalgen.compress(mnist, images, labels)
    rounded = codec.rounded_logits
    noise = torch.Generator().manual_seed(0)

    def drifted(logits, grid_bits):  # every logit moved by up to 0.9 x MARGIN, as another machine might
        shift = (torch.rand(logits.shape, generator=noise, dtype=torch.float64) * 2 - 1) * 0.9 * codec.MARGIN
        return rounded(logits + shift, grid_bits)

    monkeypatch.setattr(codec, "rounded_logits", drifted)
    decoded, decoded_labels = fractalgen.decompress(mnist, data, return_labels=True)
    assert torch.equal(decoded, images) and torch.equal(decoded_labels, labels)
    follow = codec.StreamCoding.__init__
    monkeypatch.setattr(codec.StreamCoding, "__init__", lambda self, streams, sizes, hints, *a: follow(
        self, streams, sizes, {} if isinstance(hints, dict) else hints, *a))  # the decoder ignores the hints
    with pytest.raises(codec.CodecError):
        fractalgen.decompress(mnist, data)


def test_the_exp_table_is_part_of_the_format():
    """Every decoder must weigh values with the same integers: a changed table is a new format version."""
    import hashlib

    table = codec.exp_table(codec.GRID_BITS)
    assert table[0] == 2**codec.WEIGHT_BITS and table[-1] == 0 and bool((table[:-1] > 0).all())
    assert bool((table[1:] <= table[:-1]).all())
    assert abs(float(table[256]) / 2**32 - math.exp(-1)) < 2**-32
    assert hashlib.sha256(table.numpy().astype("<i8").tobytes()).hexdigest()[:16] == EXP_TABLE_SHA256


EXP_TABLE_SHA256 = "6821adb8af41e880"


# Version 1 coded float32 probabilities, so its files decode only under the kernels that wrote them:
# the test files were written on one thread with torch's AVX2 kernels and MKL/oneDNN left to choose.
V1_KERNELS = "AVX2"
V1_OVERRIDES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != V1_KERNELS
                    or any(name in os.environ for name in V1_OVERRIDES),
                    reason=f"version 1 files decode only where they were written: torch's {V1_KERNELS} kernels with "
                    f"no kernel override in the environment; here {torch.backends.cpu.get_cpu_capability()}")
def test_version_1_files_still_decode(mnist):
    """Files written by format version 1 (float32, one thread, random MAR orders from a fixed seed), on
    the kernels that wrote them (version 2 is the format that decodes anywhere)."""
    images, labels = mnist_split("val")
    decoded, decoded_labels = fractalgen.decompress(mnist, (DATA / "v1_mnist_3_labelled.fgz").read_bytes(),
                                                    return_labels=True)
    assert torch.equal(decoded, torch.from_numpy(images[:3])[:, None])
    assert torch.equal(decoded_labels, torch.from_numpy(labels[:3]).long())
    mar = fractalgen.decompress(fractalgen.load("mnist_mar"), (DATA / "v1_mnist_mar_2.fgz").read_bytes())
    assert torch.equal(mar, torch.from_numpy(images[:2])[:, None])


def test_version_2_files_decode_and_are_written_byte_for_byte(mnist):
    """Files written by the first release of format 2 decode, and compressing the same digits today gives
    the same bytes: the model fingerprint covers a fixed list of config fields, so fields added to the
    config later (class names) do not change which files a model decodes."""
    data = DATA
    images, labels = mnist_split("val")
    digits, classes = torch.from_numpy(images)[:, None], torch.from_numpy(labels).long()
    stored = (data / "v2_mnist_4_labelled.fgz").read_bytes()
    decoded, decoded_labels = fractalgen.decompress(mnist, stored, return_labels=True)
    assert torch.equal(decoded, digits[3:7]) and torch.equal(decoded_labels, classes[3:7])
    assert fractalgen.compress(mnist, digits[3:7], labels=classes[3:7]) == stored
    mar, stored_mar = fractalgen.load("mnist_mar"), (data / "v2_mnist_mar_3.fgz").read_bytes()
    assert torch.equal(fractalgen.decompress(mar, stored_mar), digits[7:10])
    assert fractalgen.compress(mar, digits[7:10]) == stored_mar


def test_a_resaved_bundled_model_decodes_the_bundled_models_files(mnist, tmp_path):
    """The fingerprint covers the sampling settings the bundled file's config holds (not its
    recommendation): saved again, the model carries them along and still decodes the stored file."""
    stored = (DATA / "v2_mnist_4_labelled.fgz").read_bytes()
    fractalgen.save(mnist, tmp_path / "again.safetensors")
    again = fractalgen.load(tmp_path / "again.safetensors")
    assert again.recommended == mnist.recommended and codec.fingerprint(again) == codec.fingerprint(mnist)
    assert torch.equal(fractalgen.decompress(again, stored), fractalgen.decompress(mnist, stored))
    changed = fractalgen.load("mnist")
    changed.fingerprint_presets = None  # the recommendation's settings instead: another fingerprint
    assert codec.fingerprint(changed) != codec.fingerprint(mnist)


def test_empty_batch_round_trips(mnist):
    data = fractalgen.compress(mnist, torch.zeros(0, 1, 28, 28, dtype=torch.uint8))
    assert fractalgen.decompress(mnist, data).shape == (0, 1, 28, 28)


# ---- file names ------------------------------------------------------------------------------------

NAMES = ["zero.png", "photos/ü 名前.png", "photos/2024/tabby.PNG"]


def test_names_round_trip_after_the_unchanged_file(mnist, digits):
    """Names follow the payload: the header differs in its flag (and crc) only, the payload not at all,
    and decompress gives what it gives without them; a file without names has none to read."""
    images, labels = digits
    data = fractalgen.compress(mnist, images[:3], labels[:3], batch_size=2, names=NAMES)
    plain = fractalgen.compress(mnist, images[:3], labels[:3], batch_size=2)
    assert fractalgen.read_names(data) == NAMES and fractalgen.read_names(plain) is None
    assert data[codec.HEADER.size:len(plain)] == plain[codec.HEADER.size:]
    assert data[5] == plain[5] | codec.FLAG_NAMES and data[6:codec.HEADER.size - 4] == plain[6:codec.HEADER.size - 4]
    decoded, decoded_labels = fractalgen.decompress(mnist, data, return_labels=True)
    assert torch.equal(decoded, images[:3]) and torch.equal(decoded_labels, labels[:3])
    assert fractalgen.compress(mnist, images[:3], labels[:3], batch_size=2, names=None) == plain
    for name in ("v1_mnist_3_labelled.fgz", "v2_mnist_4_labelled.fgz"):
        assert fractalgen.read_names((DATA / name).read_bytes()) is None
    empty = fractalgen.compress(mnist, images[:0], names=[])
    assert fractalgen.read_names(empty) == [] and fractalgen.decompress(mnist, empty).shape == (0, 1, 28, 28)


@pytest.mark.parametrize("names, message", [
    (["../up.png", "b", "c"], "'..' part"),
    (["/etc/x.png", "b", "c"], "absolute path"),
    (["a//b.png", "b", "c"], "empty"),
    (["a\\b.png", "b", "c"], "holds '\\\\'"),
    (["C:x.png", "b", "c"], "holds ':'"),
    (["new\nline.png", "b", "c"], "holds '\\n'"),
    (["", "b", "c"], "empty"),
    (["aux.png", "b", "c"], "reserves for a device"),
    (["dot.", "b", "c"], "ending in '.'"),
    (["x" * 256, "b", "c"], "longer than 255 bytes"),
    (["\udcff.png", "b", "c"], "not valid Unicode"),
    (["a.png", "b", "A.png"], "name one file"),
    (["ä.png", "b", "a\u0308.png"], "name one file"),
    (["a", "a/b.png", "c"], "is a file, and a folder"),
    (["a/b.png", "a", "c"], "is a file, and a folder"),
    (["a", "b"], "2 names for 3 images"),
    ("abc", "a list of strings"),
    ([b"a", "b", "c"], "a name is a bytes, not a string"),
    ([1, "b", "c"], "a name is a int, not a string"),
    (["a/" * 600 + "b", "b", "c"], "longer than 1024 bytes"),
])
def test_names_that_cannot_be_stored_are_refused_before_coding(mnist, digits, monkeypatch, names, message):
    images, _ = digits
    monkeypatch.setattr(codec, "coding_pass", lambda *a, **k: pytest.fail("coded before the names were checked"))
    with pytest.raises(codec.CodecError, match="names|images") as error:
        fractalgen.compress(mnist, images[:3], names=names)
    assert message in str(error.value) and isinstance(error.value, ValueError)


def with_names_index(data: bytes, index: bytes, count: int | None = None, crc: int | None = None,
                     flags: int | None = None) -> bytes:
    """A version 2 `data` (without names) with its names flag set, `index` appended with its crc32 (or
    `crc`), the image count replaced by `count`, and the header checksum recomputed: a forgery."""
    import struct
    import zlib

    fields = list(codec.HEADER.unpack(data[:codec.HEADER.size]))
    fields[2] = fields[2] | codec.FLAG_NAMES if flags is None else flags
    fields[4] = fields[4] if count is None else count
    head = codec.HEADER.pack(*fields[:-1], 0)[:-4]
    tail = struct.pack("<I", zlib.crc32(index) if crc is None else crc)
    return head + struct.pack("<I", zlib.crc32(head)) + data[codec.HEADER.size:] + index + tail


def index_of(*names: bytes) -> bytes:
    return b"".join(codec.varint(len(name)) + name for name in names)


FOUR = [b"a.png", b"b.png", b"c.png"]  # with a fourth name, the stored file's four images


@pytest.mark.parametrize("forge, message", [
    (lambda d: with_names_index(d, index_of(*FOUR, b"d.png"), count=10**9), "cannot name 1000000000 images"),
    (lambda d: with_names_index(d, index_of(*FOUR) + codec.varint(2**62) + b"x"), "larger than it can hold"),
    (lambda d: with_names_index(d, index_of(*FOUR) + codec.varint(900) + b"x" * 100), "runs past its end"),
    (lambda d: with_names_index(d, index_of(*FOUR) + b"\xff" * 12), "number runs past its end"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"\xff\xfe.png")), "not UTF-8"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"\xed\xa0\x80.png")), "not UTF-8"),  # an encoded surrogate
    (lambda d: with_names_index(d, index_of(*FOUR, b"../../etc/passwd")), "'..' part"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"/etc/passwd")), "absolute path"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"\x1b[2J.png")), "holds '\\x1b'"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"A.PNG")), "name one file"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"d.png", b"e.png")), "6 bytes after its last name"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"d.png"), crc=0), "names index is damaged or truncated"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"d.png"))[:-6], "names index is damaged or truncated"),
    (lambda d: with_names_index(d, b"")[:-4], "names index after the payload is missing"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"d.png"), flags=1 | 4), "unknown to this fractalgen"),
    (lambda d: with_names_index(d, index_of(*FOUR, b"d.png"), flags=1), "unexpected bytes after the payload"),
])
def test_a_forged_names_index_is_one_clear_error(mnist, forge, message):
    """Checksums recomputed: every forged index is refused by read_names and by decompress (before decoding)."""
    data = forge((DATA / "v2_mnist_4_labelled.fgz").read_bytes())
    for read in (fractalgen.read_names, lambda d: fractalgen.decompress(mnist, d)):
        with pytest.raises(codec.CodecError) as error:
            read(data)
        assert message in str(error.value)


# ---- bad streams: one clear error, never images ------------------------------------------------------

def flip(data: bytes, position: int) -> bytes:
    b = bytearray(data)
    b[position] ^= 0x10
    return bytes(b)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-5], "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: b"", "not a fractalgen"),
    (lambda d: flip(d, codec.HEADER.size + 7), "payload is damaged"),
    (lambda d: flip(d, len(d) - 1), "payload is damaged"),
    (lambda d: flip(d, 9), "header is damaged"),
    (lambda d: flip(d, 1), "not a fractalgen"),
    (lambda d: d + b"\0", "unexpected bytes"),
    (lambda d: np.random.default_rng(0).bytes(len(d)), "not a fractalgen"),
    (lambda d: codec.MAGIC + np.random.default_rng(1).bytes(200), "header is damaged"),
])
def test_damaged_truncated_and_random_streams_give_a_clear_error(mnist, stream, damage, message):
    with pytest.raises(codec.CodecError, match=message):
        fractalgen.decompress(mnist, damage(stream))


def test_another_model_is_refused(stream):
    other = fractalgen.load("mnist")
    with torch.no_grad():
        other.pixel_head.logit_bias[0][0, 0] += 1e-3  # one weight, barely changed
    with pytest.raises(codec.CodecError, match="different model"):
        fractalgen.decompress(other, stream)
    with pytest.raises(codec.CodecError, match="different model"):
        fractalgen.decompress(tiny_model("tiny_ar", perturb=0.3), stream)


def test_probabilities_that_differ_from_the_encoders_are_caught_by_the_checksum(mnist, digits, monkeypatch):
    """A decoder whose numbers differ (another machine, another torch) fails loudly, never returns images."""
    images, _ = digits
    data = fractalgen.compress(mnist, images[:1])
    drifted = fractalgen.load("mnist")
    with torch.no_grad():
        for p in drifted.parameters():
            p.mul_(1.01)
    monkeypatch.setattr(codec, "fingerprint", lambda model: codec.read_header(data).fingerprint)
    with pytest.raises(codec.CodecError, match="checksum|damaged"):
        fractalgen.decompress(drifted, data)


def test_bad_inputs_are_user_errors(mnist, digits):
    images, _ = digits
    for bad in (images.float(), images[:, :, :20], images[0]):
        with pytest.raises(fractalgen.errors.UserError):
            fractalgen.compress(mnist, bad)
    with pytest.raises(fractalgen.errors.UserError, match="labels"):
        fractalgen.compress(mnist, images, labels=[10] * 5)


# ---- per-pixel maps --------------------------------------------------------------------------------

def test_pixel_bits_add_up_to_bits_per_dim_for_ar_models(mnist, digits):
    images, _ = digits
    bits = fractalgen.pixel_bits(mnist, images[:3])
    assert bits.shape == (3, 1, 28, 28) and (bits >= 0).all()
    torch.testing.assert_close(bits.double().mean((1, 2, 3)), fractalgen.nll_per_image(mnist, images[:3]).double(),
                               rtol=0, atol=1e-4)
    model = tiny_model("tiny_ar", perturb=0.3)
    noise = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    torch.testing.assert_close(fractalgen.pixel_bits(model, noise).double().mean((1, 2, 3)),
                               fractalgen.nll_per_image(model, noise).double(), rtol=0, atol=1e-4)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half."""
    ranks = rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_pasted_noise_blocks_light_up_in_the_map(mnist):
    """6x6 blocks of uniform noise pasted into real digits: the map finds their pixels (AUROC >= 0.95)."""
    images, _ = mnist_split("val")
    noisy, pasted = heatmap.paste_noise(torch.from_numpy(images[10:18])[:, None], size=6, seed=0)
    assert pasted.sum() == 8 * 36 and not torch.equal(noisy, torch.from_numpy(images[10:18])[:, None])
    bits = fractalgen.pixel_bits(mnist, noisy)[:, 0].numpy()
    pasted = pasted.numpy()
    assert auroc(bits.ravel(), pasted.ravel()) >= 0.95


def test_heatmap_picture_shows_the_image_beside_its_map():
    image = torch.zeros(1, 4, 4, dtype=torch.uint8)
    image[0, 1, 2] = 200
    bits = torch.full((1, 4, 4), 0.1)
    bits[0, 3, 0] = 5.0  # the one surprising pixel
    picture = np.asarray(heatmap_picture(image, bits, vmax=5.0, scale=8))
    # Left panel: the image at 8x; right panel: the ramp's top colour only at the surprising pixel.
    gray = (picture == 200).all(-1)
    rows, _ = gray.nonzero()
    assert 64 <= gray.sum() <= 66 and (np.bincount(rows) == 8).sum() == 8  # an 8x8 square (and maybe text)
    top_colour = (picture == heatmap.RAMP[-1].astype(np.uint8)).all(-1)
    assert 64 <= top_colour.sum() <= 64 + 3 * 8  # the pixel, and the colour bar's top row
    assert heatmap.nice_vmax(5.0) == 8 and heatmap.nice_vmax(0.3) == 1 and heatmap.nice_vmax(3.2) == 4


# ---- command line ----------------------------------------------------------------------------------

def test_cli_round_trip_png_files_with_labels(tmp_path, digits):
    import json

    from PIL import Image

    images, labels = digits
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:05d}_class{int(labels[i])}.png")
    code, out, err = run_cli("compress", folder, "--labels", "--out", tmp_path / "d.fgz", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["images"] == 3 and result["bytes"] == (tmp_path / "d.fgz").stat().st_size
    assert result["file_bits_per_dim"] <= 1.01 * result["model_bits_per_dim"] + 8 * 64 / (3 * 784) + 0.01
    code, out, err = run_cli("decompress", tmp_path / "d.fgz", "--out", tmp_path / "out")
    assert code == 0, err
    for i in range(3):
        name = f"{i:05d}_class{int(labels[i])}.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), images[i, 0].numpy())
    # Decoding again into the same folder keeps the first files: a fresh numbered subfolder.
    code, _, err = run_cli("decompress", tmp_path / "d.fgz", "--out", tmp_path / "out")
    assert code == 0 and (tmp_path / "out" / "002" / f"00002_class{int(labels[2])}.png").is_file()


def test_cli_npz_round_trip_and_one_line_errors(tmp_path, digits):
    images, _ = digits
    np.savez(tmp_path / "x.npz", images=images[:2, 0].numpy())
    code, _, err = run_cli("compress", tmp_path / "x.npz", "--out", tmp_path / "x.fgz")
    assert code == 0, err
    data = (tmp_path / "x.fgz").read_bytes()
    (tmp_path / "bad.fgz").write_bytes(flip(data, len(data) - 2))
    (tmp_path / "short.fgz").write_bytes(data[:-8])
    for bad, message in (("bad.fgz", "damaged"), ("short.fgz", "truncated"), ("x.npz", "not a fractalgen")):
        code, _, err = run_cli("decompress", tmp_path / bad, "--out", tmp_path / "never")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (28, 28), (10, 20, 30)).save(tmp_path / "colour.png")
    code, _, err = run_cli("compress", tmp_path / "colour.png", "--out", tmp_path / "c.fgz")
    assert code == 2 and "colour" in err


def write_digits(folder: Path, images, names) -> dict[str, np.ndarray]:
    """One grayscale PNG per name (relative to `folder`); returns {name: pixels (H, W)}."""
    from PIL import Image

    pictures = {}
    for image, name in zip(images, names, strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / name)
        pictures[name] = image[0].numpy()
    return pictures


def read_tree(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in folder.rglob("*") if p.is_file()}


def test_cli_restores_file_names_in_nested_unicode_folders(tmp_path, digits):
    """A folder and its subfolders (named on the command line) come back under their names, relative to
    the folder holding every input; decoding again keeps the existing-folder policy; --no-names and files
    written before names decode to numbered files."""
    images, labels = digits
    tree = ["zero.png", "ünï cödé/名前 1.png", "ünï cödé/deeper/x_class3.png"]
    pictures = write_digits(tmp_path / "in", images[:3], tree)
    inputs = [tmp_path / "in", tmp_path / "in" / "ünï cödé", tmp_path / "in" / "ünï cödé" / "deeper"]
    code, out, err = run_cli("compress", *inputs, "--out", tmp_path / "named.fgz", "--json")
    assert code == 0 and '"names": true' in out, err
    assert fractalgen.read_names((tmp_path / "named.fgz").read_bytes()) == tree
    assert run_cli("decompress", tmp_path / "named.fgz", "--out", tmp_path / "out")[0] == 0
    assert {k: v.tolist() for k, v in read_tree(tmp_path / "out").items()} == {
        k: v.tolist() for k, v in pictures.items()}
    code, _, err = run_cli("decompress", tmp_path / "named.fgz", "--out", tmp_path / "out")
    assert code == 0 and "already holds" in err and (tmp_path / "out" / "002" / tree[2]).is_file()
    (tmp_path / "out" / tree[0]).write_bytes(b"old")
    assert run_cli("decompress", tmp_path / "named.fgz", "--out", tmp_path / "out", "--overwrite")[0] == 0
    assert sorted(read_tree(tmp_path / "out")) == sorted(tree + ["002/" + name for name in tree])
    # One file named on the command line: its own name.
    assert run_cli("compress", tmp_path / "in" / tree[1], "--out", tmp_path / "one.fgz")[0] == 0
    assert fractalgen.read_names((tmp_path / "one.fgz").read_bytes()) == ["名前 1.png"]
    # --no-names, and a file written before names: numbered files in the original order.
    code, out, err = run_cli("compress", *inputs, "--no-names", "--out", tmp_path / "plain.fgz", "--json")
    assert code == 0 and '"names": false' in out, err
    assert fractalgen.read_names((tmp_path / "plain.fgz").read_bytes()) is None
    assert run_cli("decompress", tmp_path / "plain.fgz", "--out", tmp_path / "plain")[0] == 0
    assert [v.tolist() for _, v in sorted(read_tree(tmp_path / "plain").items())] == [
        pictures[name].tolist() for name in tree]
    # Names that decompress gives a file without names are not stored: the file is the one --no-names writes.
    write_digits(tmp_path / "numbered", images[:2], ["00000_uncond.png", "00001_uncond.png"])
    for flags in ((), ("--no-names",)):
        assert run_cli("compress", tmp_path / "numbered", *flags, "--out", tmp_path / f"numbered{flags}.fgz")[0] == 0
    assert (tmp_path / "numbered().fgz").read_bytes() == (tmp_path / "numbered('--no-names',).fgz").read_bytes()
    assert run_cli("decompress", DATA / "v2_mnist_4_labelled.fgz", "--out", tmp_path / "old")[0] == 0
    _, old_labels = mnist_split("val")
    assert sorted(read_tree(tmp_path / "old")) == [f"{i:05d}_class{old_labels[3 + i]}.png" for i in range(4)]


def test_cli_names_that_cannot_be_restored_are_one_line_and_write_nothing(tmp_path, digits):
    """Names one file on some system (case, or .jpg and .png both becoming .png) are refused by compress with
    the way out (--no-names); decompress refuses a way into the output folder through a link or a file."""
    images, _ = digits
    write_digits(tmp_path / "case", images[:2], ["Seven.png", "seven.png"])
    write_digits(tmp_path / "suffix", images[:2], ["seven.bmp", "seven.png"])
    for folder, words in (("case", "name one file"), ("suffix", "once each name ends in .png")):
        code, _, err = run_cli("compress", tmp_path / folder, "--out", tmp_path / f"{folder}.fgz")
        assert code == 2 and words in err and "--no-names" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / f"{folder}.fgz").exists()
    assert run_cli("compress", tmp_path / "case", "--no-names", "--out", tmp_path / "case.fgz")[0] == 0
    write_digits(tmp_path / "in", images[:2], ["a.png", "sub/b.png"])
    assert run_cli("compress", tmp_path / "in", tmp_path / "in" / "sub", "--out", tmp_path / "in.fgz")[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "sub").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "sub").write_bytes(b"kept")
    for out, words in (("link", "is a link, not a folder"), ("file", "is a file, not a folder")):
        for overwrite in ((), ("--overwrite",)):
            code, _, err = run_cli("decompress", tmp_path / "in.fgz", "--out", tmp_path / out, *overwrite)
            assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
            assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["sub"]
    assert list(elsewhere.iterdir()) == [] and (tmp_path / "file" / "sub").read_bytes() == b"kept"


def test_cli_nll_writes_likelihood_maps(tmp_path):
    code, _, err = run_cli("nll", "--limit", "2", "--maps", tmp_path / "maps", "--device", "cpu",
                             "--threads", "1")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["00000_map.png", "00001_map.png"]


def test_cli_nll_refuses_an_unwritable_maps_folder_before_measuring(tmp_path, monkeypatch):
    import fractalgen.likelihood

    measured = []
    monkeypatch.setattr(fractalgen.likelihood, "measure", lambda *a, **k: measured.append(1))
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run_cli("nll", "--limit", "2", "--maps", tmp_path / "file" / "maps", "--device", "cpu",
                           "--threads", "1")
    assert code == 2 and "cannot write to output folder" in err and len(err.strip().splitlines()) == 1
    assert measured == []  # refused before the likelihood pass
    assert (tmp_path / "file").read_text() == "not a folder"


# ---- hostile files -------------------------------------------------------------------------------

def forged_count(data: bytes, count: int) -> bytes:
    """`data` with its header's image count replaced and its header checksum recomputed."""
    import struct
    import zlib

    layout = codec.HEADER_V1 if data[4] == 1 else codec.HEADER
    fields = list(layout.unpack(data[:layout.size]))
    fields[4] = count
    head = layout.pack(*fields[:-1], 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head)) + data[layout.size:]


@pytest.mark.parametrize("name", ["v1_mnist_3_labelled.fgz", "v2_mnist_4_labelled.fgz"])
@pytest.mark.parametrize("count", [10**9, 2**32 - 1, 10**6])
def test_a_forged_image_count_is_refused_before_decoding(mnist, name, count):
    """A count the payload cannot hold (checksums recomputed) is one line at once, not a decode without end
    or an allocation per claimed image."""
    data = forged_count((DATA / name).read_bytes(), count)
    with pytest.raises(codec.CodecError, match="damaged or forged: it claims"):
        fractalgen.decompress(mnist, data)


def test_decompress_refuses_what_is_not_a_file_and_leaves_no_folder_on_failure(tmp_path):
    if Path("/dev/zero").exists():
        code, _, err = run_cli("decompress", "/dev/zero", "--out", tmp_path / "zero")
        assert code != 0 and "not a regular file" in err and len(err.strip().splitlines()) == 1
    stored = DATA / "v2_mnist_mar_3.fgz"  # not the default model's
    code, _, err = run_cli("decompress", stored, "--out", tmp_path / "out")
    assert code != 0 and "different model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "zero").exists() and not (tmp_path / "out").exists()


def test_cli_batch_size_and_images_per_stream_change_neither_file_nor_images(tmp_path, digits):
    images, _ = digits
    np.savez(tmp_path / "d.npz", images=images[:5, 0].numpy())
    files = []
    for k, (batch, group) in enumerate([(512, 2), (1, 2), (3, 5)]):
        out = tmp_path / f"{k}.fgz"
        assert run_cli("compress", tmp_path / "d.npz", "--out", out, "--batch-size", batch,
                       "--images-per-stream", group)[0] == 0
        files.append(out.read_bytes())
    assert files[0] == files[1] != files[2]  # the batch changes nothing; the stream layout is the file's
    for k, batch in enumerate([1, 4]):
        code, _, err = run_cli("decompress", tmp_path / "2.fgz", "--out", tmp_path / f"o{k}",
                               "--batch-size", batch)
        assert code == 0, err
        from PIL import Image

        decoded = np.stack([np.asarray(Image.open(tmp_path / f"o{k}" / f"{i:05d}_uncond.png")) for i in range(5)])
        assert np.array_equal(decoded, images[:5, 0].numpy())


# ---- fuzzed files: the exact images or a CodecError, nothing else, in bounded time ----------------------

# The header's fields in HEADER's order (the header crc follows them), each with what its slot can hold.
HEADER_FIELDS = {"magic": st.binary(min_size=4, max_size=4), "version": st.integers(0, 255),
                 "flags": st.integers(0, 255), "fingerprint": st.binary(min_size=8, max_size=8),
                 "count": st.integers(0, 2**32 - 1), "channels": st.integers(0, 255),
                 "height": st.integers(0, 2**16 - 1), "width": st.integers(0, 2**16 - 1),
                 "group": st.integers(0, 2**32 - 1), "grid_bits": st.integers(0, 255),
                 "checksum": st.binary(min_size=8, max_size=8),
                 "payload_bytes": st.integers(0, 2**32 - 1), "payload_crc": st.integers(0, 2**32 - 1)}
SMALL_VALUES = {"count": st.integers(0, 40), "group": st.integers(0, 40), "grid_bits": st.integers(0, 17),
                "version": st.integers(0, 3), "flags": st.integers(0, 3)}  # near the real ones, where bugs hide


@pytest.fixture(scope="module")
def small_file():
    """A tiny model, two labelled 8x8 images and their file, one image per stream (two streams)."""
    model = tiny_model(TINY, perturb=0.3)
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    labels = torch.tensor([1, 0])
    return model, images, labels, fractalgen.compress(model, images, labels, images_per_stream=1)


def mutated(data: bytes, changes: dict, edits: list, cut: int, crcs: bool) -> bytes:
    """`data` with header fields replaced, payload bytes replaced at (position, value), `cut` bytes cut from the
    payload's end (negative: that many zeros appended) and, `crcs`, the payload length and both crcs recomputed
    (those the changes do not set). A version 1 header is written in version 1's layout."""
    fields = dict(zip(HEADER_FIELDS, codec.HEADER.unpack(data[:codec.HEADER.size]), strict=False))
    payload = bytearray(data[codec.HEADER.size:])
    for position, value in edits:
        if payload:
            payload[position % len(payload)] = value
    payload = payload[:len(payload) - cut] if cut >= 0 else payload + bytes(-cut)
    if crcs:
        fields.update(payload_bytes=len(payload), payload_crc=zlib.crc32(payload))
    fields.update(changes)
    layout = codec.HEADER
    if fields["version"] == 1:
        layout = codec.HEADER_V1
        del fields["grid_bits"]
    head = layout.pack(*fields.values(), 0)[:-4]
    crc = zlib.crc32(head) if crcs else int.from_bytes(data[codec.HEADER.size - 4:codec.HEADER.size], "little")
    return head + struct.pack("<I", crc) + bytes(payload)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(list(HEADER_FIELDS)), st.none(), max_size=3).flatmap(
           lambda chosen: st.fixed_dictionaries({k: st.one_of(SMALL_VALUES.get(k, HEADER_FIELDS[k]), HEADER_FIELDS[k])
                                                 for k in chosen})),
       edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=2),
       cut=st.sampled_from([0, 0, 0, 1, 4, -1, -4]), crcs=st.sampled_from([True, True, True, False]))
def test_fuzzed_files_decode_exactly_or_raise_the_codec_error(small_file, changes, edits, cut, crcs):
    model, images, labels, data = small_file
    try:
        decoded, decoded_labels = fractalgen.decompress(model, mutated(data, changes, edits, cut, crcs),
                                                        return_labels=True)
    except codec.CodecError as e:
        assert "\n" not in str(e)
        return
    assert torch.equal(decoded, images) and torch.equal(decoded_labels, labels)
