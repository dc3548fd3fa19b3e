"""Hostile files built in the tests: each ends in correct work or one clear line, within seconds and bounded memory.

Every case runs in a child process with a time limit and an address-space limit (tests/bounded.py),
so a regression shows as a failed test, not a hung or swapping machine.
"""
import argparse
import io
import json
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
import torch
from bounded import assert_one_line_error, run_cases
from frame import DATA, tiny_config, tiny_model
from PIL import Image
from safetensors.torch import save_file

import fractalgen
from fractalgen import codec
from fractalgen.formats.official import official_state_dict
from fractalgen.images import fit_picture as center_crop_adm

# Every command line of this file runs in ONE bounded child (torch imported once): the builders
# below write their hostile files into a folder and return {case name: argv}; the tests read the outcomes.
BUILDERS = []


def builder(fn):
    BUILDERS.append(fn)
    return fn


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{case name: (exit code, stdout, stderr)} and the folder of each builder."""
    root = tmp_path_factory.mktemp("hostile")
    cases = {}
    for build in BUILDERS:
        folder = root / build.__name__
        folder.mkdir()
        cases.update(build(folder))
    # 1.5 GiB of address space (torch takes 0.6): enough for every case done right, not for a 3 GiB array.
    results = run_cases(cases, seconds=300, memory_gib=1.5)
    return results, {build.__name__: root / build.__name__ for build in BUILDERS}


# ---- 1. the safe loader's walk of official `args` is bounded -----------------------------------

@builder
def deep_args(folder):
    """A list holding itself, then doubled 60 times: 2**60 paths through 62 objects (the walk that hung)."""
    nested = []
    nested.append(nested)
    for _ in range(60):
        nested = [nested, nested]
    doubled = [0]  # no cycle: the exponential walk alone (the old loader spun on this one)
    for _ in range(60):
        doubled = [doubled, doubled]
    state = official_state_dict(tiny_model())
    torch.save({"model": state, "args": argparse.Namespace(model="tiny_ar", nested=nested)}, folder / "deep.pth")
    torch.save({"model": state, "args": argparse.Namespace(model="tiny_ar", nested=doubled)},
               folder / "doubled.pth")
    np.savez(folder / "d.npz", images=np.zeros((2, 16, 16, 3), dtype=np.uint8))
    # A flat list past the walk's budget is refused, not walked.
    torch.save({"model": state, "args": argparse.Namespace(model="tiny_ar", big=[0] * 200_000)}, folder / "wide.pth")
    return {
        "deep": ["sample", "--checkpoint", folder / "deep.pth", "--n", "1", "--num-iter", "16,4",
                 "--out", folder / "out", "--device", "cpu", "--threads", "1"],
        "doubled": ["nll", "--checkpoint", folder / "doubled.pth", "--data", folder / "d.npz", "--device", "cpu"],
        "wide": ["sample", "--checkpoint", folder / "wide.pth", "--n", "1", "--out", folder / "out2",
                 "--device", "cpu"],
    }


def test_shared_and_self_referencing_args_load_in_seconds(outcomes):
    results, folders = outcomes
    code, _, err = results["deep"]
    assert code == 0 and "Traceback" not in err, err
    assert (folders["deep_args"] / "out" / "grid.png").is_file()
    code, out, err = results["doubled"]
    assert code == 0 and "bits/dim" in out, err
    assert_one_line_error(results["wide"], "sample", "refusing", "args")


# ---- 4. malformed metadata in our safetensors format; 5. non-finite weights ---------------------

WEIGHT = "levels.0.patch_embed.weight"
DEEP = "[" * 100_000 + "]" * 100_000
BAD_METADATA = {  # name -> (metadata entries, words the error line must hold)
    "config-a-list": ({"config": "[1, 2, 3]"}, ["'config' must be a JSON object"]),
    "config-not-json": ({"config": "{{{{"}, ["'config' is not valid JSON"]),
    "config-deep": ({"config": '{"img_sizes": ' + DEEP + "}"}, ["nested too deeply"]),
    "widths-strings": ({"config": {"widths": ["64", "32", "16"]}}, ["'widths'"]),
    "guiding-pixel-int": ({"config": {"guiding_pixel": 1}}, ["'guiding_pixel'"]),
    "channels-bool": ({"config": {"channels": True}}, ["'channels'"]),
    "cfg-nan": ({"config": {"cfg": float("nan")}}, ["NaN", "finite"]),
    "huge-width": ({"config": {"widths": [2**62, 32, 16]}}, ["'widths'"]),
    "sampling-not-json": ({"sampling": "cfg=3"}, ["'sampling' is not valid JSON"]),
    "sampling-a-list": ({"sampling": "[3.0]"}, ["'sampling' must be a JSON object"]),
    "sampling-deep": ({"sampling": DEEP}, ["nested too deeply"]),
    "sampling-cfg-text": ({"sampling": {"cfg": "high"}}, ["'cfg'"]),
    "sampling-temperature-nan": ({"sampling": {"temperature": float("nan")}}, ["NaN", "finite"]),
    "sampling-temperature-zero": ({"sampling": {"temperature": 0}}, ["'temperature'"]),
    "sampling-num-iter": ({"sampling": {"num_iter": [4, "x"]}}, ["'num_iter'"]),
    "sampling-schedule": ({"sampling": {"cfg_schedule": 7}}, ["'cfg_schedule'"]),
    "sampling-unknown": ({"sampling": {"steps": 3}}, ["'steps'"]),
}
BAD_WEIGHTS = {  # name -> (change to WEIGHT, words)
    "int-weights": (lambda w: w.to(torch.int32), ["int32"]),
    "bool-weights": (lambda w: w > 0, ["bool"]),
    "nan-weight": (lambda w: w.clone().index_fill_(0, torch.tensor([0]), float("nan")), ["non-finite"]),
    "inf-weight": (lambda w: w.clone().index_fill_(0, torch.tensor([1]), float("inf")), ["non-finite"]),
}


@builder
def bad_safetensors(folder):
    """Each file differs from a good one in one respect: a metadata entry, or one weight tensor."""
    model = tiny_model()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = json.loads(model.config.to_json())
    cases = {}
    for name, (meta, _) in BAD_METADATA.items():
        if isinstance(meta.get("config"), dict):
            meta = {**meta, "config": {**config, **meta["config"]}}
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        save_file(tensors, folder / f"{name}.safetensors",
                  metadata={"format": "fractalgen", "config": model.config.to_json(), **meta})
    for name, (change, _) in BAD_WEIGHTS.items():
        save_file({**tensors, WEIGHT: change(tensors[WEIGHT]).contiguous()}, folder / f"{name}.safetensors",
                  metadata={"config": model.config.to_json()})
    for name in [*BAD_METADATA, *BAD_WEIGHTS]:
        cases[name] = ["sample", "--checkpoint", folder / f"{name}.safetensors", "--n", "1", "--out",
                       folder / "out", "--device", "cpu"]
    for name in ("nan-weight", "config-deep"):
        cases[f"nll-{name}"] = ["nll", "--checkpoint", folder / f"{name}.safetensors", "--device", "cpu"]
    return cases


def test_malformed_metadata_and_weights_are_one_line(outcomes):
    results, folders = outcomes
    for name, (_, words) in BAD_METADATA.items():
        assert_one_line_error(results[name], "sample", f"{name}.safetensors", *words)
    for name, (_, words) in BAD_WEIGHTS.items():
        assert_one_line_error(results[name], "sample", f"{name}.safetensors", WEIGHT, *words)
    assert_one_line_error(results["nll-nan-weight"], "nll", WEIGHT, "non-finite")
    assert_one_line_error(results["nll-config-deep"], "nll", "nested too deeply")
    assert not (folders["bad_safetensors"] / "out").exists()


@builder
def bad_official(folder):
    state = official_state_dict(tiny_model())
    key = next(iter(state))
    files = {"int": {**state, key: state[key].to(torch.int64)},
             "nan": {**state, key: torch.full_like(state[key], float("nan"))}}
    for name, weights in files.items():
        torch.save({"model": weights, "args": argparse.Namespace(model="tiny_ar")}, folder / f"{name}.pth")
    return {f"official-{name}": ["sample", "--checkpoint", folder / f"{name}.pth", "--out", folder / "out",
                                 "--device", "cpu"] for name in files}


def test_official_checkpoint_with_integer_or_nan_weights_is_refused(outcomes):
    results, _ = outcomes
    key = next(iter(official_state_dict(tiny_model())))
    assert_one_line_error(results["official-int"], "sample", key, "int64")
    assert_one_line_error(results["official-nan"], "sample", key, "non-finite")


# ---- 7. .npz readers read only what they need, after checking it ----------------------------

def npy_header(shape, descr="|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def add_zero_member(path, name: str, size: int):
    """Append `name`.npy to the zip at `path`: a uint8 array of `size` zeros, deflated, without inflating it here.

    Deflate with a full flush after every block resets the compressor, so one compressed 64 MiB
    block of zeros can be repeated; the CRC is computed over the real bytes.
    """
    block = 64 * 2**20
    assert size % block == 0
    header = npy_header((size,))
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    zero_block = zlib.compressobj(1, zlib.DEFLATED, -15)
    repeated = zero_block.compress(bytes(block)) + zero_block.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block
    crc = zlib.crc32(header)
    zeros = bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    compressed = len(head) + len(repeated) * (size // block) + len(tail)
    uncompressed = len(header) + size
    assert uncompressed < 2**32 and compressed < 2**32  # a plain (not zip64) entry
    with zipfile.ZipFile(path) as z:  # the existing entries, copied as they are
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with open(path, "wb") as f:
        central = b""
        for info, data in entries + [(None, None)]:
            offset = f.tell()
            if info is not None:
                fields = (20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data))
                filename, payload = info.filename.encode(), [data]
            else:
                fields = (20, 0, 8, 0, 0, crc, compressed, uncompressed)
                filename, payload = f"{name}.npy".encode(), [head] + [repeated] * (size // block) + [tail]
            f.write(struct.pack("<IHHHHHIII", 0x04034B50, *fields) + struct.pack("<HH", len(filename), 0) + filename)
            f.writelines(payload)
            central += (struct.pack("<IH", 0x02014B50, 20) + struct.pack("<HHHHHIII", *fields)
                        + struct.pack("<HHHHHII", len(filename), 0, 0, 0, 0, 0, offset) + filename)
        start = f.tell()
        f.write(central)
        count = len(entries) + 1
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), start, 0))


def tiny_gray_checkpoint(folder):
    fractalgen.save(fractalgen.build(tiny_config()), folder / "tiny.safetensors")
    return folder / "tiny.safetensors"


@builder
def npz_with_unused_giant(folder):
    """Sixteen 8x8 digits with labels, plus an unused member that inflates to 3 GiB (the file: a few MB)."""
    path = folder / "digits.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 2)
    add_zero_member(path, "unused", 3 * 2**30)
    return {"giant": ["nll", "--checkpoint", tiny_gray_checkpoint(folder), "--data", path, "--split", "train",
                      "--device", "cpu", "--json"]}


def test_npz_readers_read_only_the_members_they_need(outcomes):
    results, folders = outcomes
    path = folders["npz_with_unused_giant"] / "digits.npz"
    assert path.stat().st_size < 20 * 2**20
    with zipfile.ZipFile(path) as z:  # the member really inflates to 3 GiB
        assert z.getinfo("unused.npy").file_size == len(npy_header((3 * 2**30,))) + 3 * 2**30
    with np.load(path) as f:  # and numpy sees it (its header; not read here)
        assert "unused" in f.files
    code, out, err = results["giant"]  # in 1.5 GiB of address space
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["images"] == 16


def test_npz_statistics_reader_skips_unused_members(tmp_path):
    from fractalgen.metrics import load_statistics

    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.zeros(4), sigma=np.eye(4))
    add_zero_member(path, "junk", 64 * 2**20)
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        stats = load_statistics(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.mu.shape == (4,) and peak < 8 * 2**20


BAD_NPZ = {  # file -> words of the error line
    "garbage.npz": "not an .npz archive", "objects.npz": "holds Python objects", "declared.npz": "declares shape",
    "float_labels.npz": "'labels' must hold one integer per image", "float_images.npz": "must be uint8 images",
}


@builder
def hostile_npz(folder):
    rng = np.random.default_rng(0)
    (folder / "garbage.npz").write_bytes(rng.bytes(4096))
    np.savez(folder / "objects.npz", images=np.array([{"a": 1}, None], dtype=object))
    with zipfile.ZipFile(folder / "declared.npz", "w") as z:  # the header claims a terabyte; the data is 64 bytes
        z.writestr("images.npy", npy_header((2**20, 2**10, 2**10)) + b"\x00" * 64)
    np.savez(folder / "float_labels.npz", images=rng.integers(0, 255, (4, 8, 8), dtype=np.uint8),
             labels=np.array([0.5, 1, 0, 1]))
    np.savez(folder / "float_images.npz", images=np.zeros((4, 8, 8), dtype=np.float32))
    checkpoint = tiny_gray_checkpoint(folder)
    cases = {}
    for name in BAD_NPZ:
        cases[name] = ["nll", "--checkpoint", checkpoint, "--data", folder / name, "--split", "train",
                       "--device", "cpu"]
        cases["stats-" + name] = ["fid", folder, "--ref-stats", folder / name]
    return cases


def test_hostile_npz_files_are_one_line(outcomes):
    results, _ = outcomes
    for name, words in BAD_NPZ.items():
        assert_one_line_error(results[name], "nll", name, words)
        assert "allow_pickle" not in results[name][2]
        code, _, err = results["stats-" + name]
        assert code == 2 and "Traceback" not in err and "allow_pickle" not in err, err


# ---- 10. a very tall, thin image in a dataset folder ----------------------------------------

@builder
def tall_thin_image(folder):
    """1 x 16M pixels (a 16 KB PNG): resized whole on the way to an 8x8 crop it would need 1 GiB."""
    Image.new("L", (1, 16 * 2**20), 200).save(folder / "strip.png")
    Image.new("L", (10, 12), 100).save(folder / "normal.png")
    return {"tall": ["nll", "--checkpoint", tiny_gray_checkpoint(folder), "--data", folder, "--device", "cpu",
                     "--json"]}


def test_tall_thin_image_costs_its_centre_square(outcomes):
    results, folders = outcomes
    assert (folders["tall_thin_image"] / "strip.png").stat().st_size < 2**20
    code, out, err = results["tall"]
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["images"] == 2


def test_elongated_images_crop_to_their_centre():
    strip = Image.new("L", (3, 300), 0)
    strip.paste(255, (0, 147, 3, 150))  # rows 147..149; the centre square is rows 148..150
    crop = np.asarray(center_crop_adm(strip, 3))
    assert crop.shape == (3, 3) and crop.max() == 255
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8))
    assert center_crop_adm(photo, 8).size == (8, 8)


@pytest.mark.parametrize("entry, words", [([1, 2], "'model' entry is a list, not a state dict"),
                                          (None, "has no 'model' entry (its keys: args)")])
def test_an_official_file_without_a_state_dict_says_what_it_holds(tmp_path, entry, words):
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"args": None} if entry is None else {"model": entry, "args": None}, path)
    with pytest.raises(fractalgen.CheckpointError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fractalgen.load(path)


# ---- 11. a compressed file's names index: forged counts, lengths, text and paths -----------

def forged_names(index: bytes, count: int | None = None) -> bytes:
    """A stored version 2 file (four digits, the default model's) with a names index appended: flag set,
    image count replaced by `count`, every checksum recomputed."""
    data = (DATA / "v2_mnist_4_labelled.fgz").read_bytes()
    fields = list(codec.HEADER.unpack(data[:codec.HEADER.size]))
    fields[2] |= codec.FLAG_NAMES
    fields[4] = fields[4] if count is None else count
    head = codec.HEADER.pack(*fields[:-1], 0)[:-4]
    return (head + struct.pack("<I", zlib.crc32(head)) + data[codec.HEADER.size:] + index
            + struct.pack("<I", zlib.crc32(index)))


def names_index(*names: bytes) -> bytes:
    return b"".join(codec.varint(len(name)) + name for name in names)


# Deep, distinct, valid names: the most work per byte, down to the last name, a file named like their
# first folder; a million names, each one byte, all alike.
DEEP = [("d/" * 500 + f"{k:05d}").encode() for k in range(4000)]
FORGED_NAMES = {
    "names-count": (names_index(b"a.png", b"b.png"), 2**32 - 1, "cannot name 4294967295 images"),
    "names-length": (names_index(b"a.png") + codec.varint(2**62), None, "larger than it can hold"),
    "names-utf8": (names_index(b"a.png", b"b.png", b"c.png", b"\xc0\xae\xc0\xae/x.png"), None, "not UTF-8"),
    "names-up": (names_index(b"a.png", b"b.png", b"c.png", b"../escape.png"), None, "'..' part"),
    "names-root": (names_index(b"a.png", b"b.png", b"c.png", b"/tmp/escape.png"), None, "absolute path"),
    "names-deep": (names_index(*DEEP, b"d"), len(DEEP) + 1, "is a file, and a folder"),
    "names-many": (b"\x01a" * 10**6, 10**6, "name one file"),
}


@builder
def forged_names_index(folder):
    cases = {}
    for name, (index, count, _) in FORGED_NAMES.items():
        (folder / f"{name}.fgz").write_bytes(forged_names(index, count))
        cases[name] = ["decompress", folder / f"{name}.fgz", "--out", folder / "out" / name]
    return cases


def test_decompress_refuses_forged_names_indexes_in_one_line_and_writes_nothing(outcomes):
    results, folders = outcomes
    for name, (_, _, words) in FORGED_NAMES.items():
        assert_one_line_error(results[name], "decompress", "the names index is damaged", words)
    assert not (folders["forged_names_index"] / "out").exists()
    assert not list(folders["forged_names_index"].parent.rglob("escape.png"))
