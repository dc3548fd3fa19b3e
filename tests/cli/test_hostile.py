"""Hostile and broken input through the command line: one line on stderr, a non-zero exit, no traceback.

Damaged checkpoints (zero bytes, truncated, garbage, wrong layout, code-running pickles on the
--resume path) are refused without touching the file; image folders with odd modes, truncated or
empty images and non-image files train, with the skips counted.
"""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from frame import Exploit, run_cli, tiny_config, train_tiny
from PIL import Image

from fractalgen.data import load_dataset


def assert_one_line_error(code, err, command, *words):
    lines = err.strip().splitlines()
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"fractalgen {command}: error: "), err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (checkpoint.pt + model.safetensors) to damage in various ways."""
    root = tmp_path_factory.mktemp("hostile")
    train_tiny(root)
    return root


def damaged_files(trained, tmp_path):
    """(name, bytes) of broken model files, each derived from a real one."""
    weights = (trained / "run" / "model.safetensors").read_bytes()
    header = len(weights) // 2
    bad_meta = bytearray(weights)
    start = weights.index(b'"config":"') + len(b'"config":"')
    bad_meta[start:start + 4] = b"{{{{"  # same length: the header still parses, the config JSON does not
    return {
        "empty.safetensors": b"",
        "truncated.safetensors": weights[:header],
        "garbage.safetensors": np.random.default_rng(0).bytes(4096),
        "badconfig.safetensors": bytes(bad_meta),
        "empty.pth": b"",
        "fakezip.pth": b"PK\x03\x04" + b"\x00" * 64,
        "badpickle.pth": b"\x80\x04\x95garbage",
    }


def test_damaged_model_files_are_refused_and_left_alone(trained, tmp_path):
    for name, content in damaged_files(trained, tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content)
        code, _, err = run_cli("sample", "--checkpoint", path, "--n", "1", "--out", tmp_path / "out")
        assert_one_line_error(code, err, "sample", name)
        assert path.read_bytes() == content  # never modified
    (tmp_path / "no-model").mkdir()
    code, _, err = run_cli("nll", "--checkpoint", tmp_path / "no-model")
    assert_one_line_error(code, err, "nll", "no model.safetensors")
    assert not (tmp_path / "out").exists()


def write_checkpoint(folder, state=None, raw: bytes | None = None):
    folder.mkdir()
    if raw is None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        raw = buffer.getvalue()
    (folder / "checkpoint.pt").write_bytes(raw)
    return folder


def test_damaged_training_checkpoints_are_refused(trained, tmp_path):
    good_bytes = (trained / "run" / "checkpoint.pt").read_bytes()
    good = torch.load(trained / "run" / "checkpoint.pt", weights_only=True)
    model = dict(good["model"])
    model["null_class"] = torch.zeros(3, 3)
    cases = {
        "zero-bytes": ({"raw": b""}, "empty (0 bytes)"),
        "truncated": ({"raw": good_bytes[: len(good_bytes) // 2]}, "cannot read checkpoint"),
        "garbage": ({"raw": np.random.default_rng(1).bytes(2048)}, "cannot read checkpoint"),
        "a-list": ({"state": [1, 2, 3]}, "not a checkpoint dict"),
        "weights-only": ({"state": {"model": good["model"]}}, "not a training checkpoint"),
        "bad-step": ({"state": {**good, "step": "three"}}, "damaged"),
        "bad-config": ({"state": {**good, "config": "{not json"}}, "damaged"),
        "bad-rng": ({"state": {**good, "rng": [{"torch": torch.zeros(3)}]}}, "damaged or does not fit"),
        "wrong-shapes": ({"state": {**good, "model": model}}, "does not fit"),
    }
    for name, (how, words) in cases.items():
        folder = write_checkpoint(tmp_path / name, **how)
        before = (folder / "checkpoint.pt").read_bytes()
        # --steps beyond the stored step: a run already at its end would stop before loading anything
        code, _, err = run_cli("train", "--resume", folder, "--steps", "1000", "--device", "cpu")
        assert_one_line_error(code, err, "train", words)
        assert (folder / "checkpoint.pt").read_bytes() == before, name
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"], name  # nothing else written


def test_resume_refuses_a_checkpoint_whose_pickle_runs_code(trained, tmp_path):
    target = tmp_path / "pwned"
    good = torch.load(trained / "run" / "checkpoint.pt", weights_only=True)
    folder = write_checkpoint(tmp_path / "evil", {**good, "payload": Exploit(target)})
    code, _, err = run_cli("train", "--resume", folder, "--device", "cpu")
    assert_one_line_error(code, err, "train", "refusing")
    assert not target.exists()


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "fractalgen", "sample", "--checkpoint",
                           str(tmp_path / "empty.safetensors"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert_one_line_error(proc.returncode, proc.stderr, "sample", "empty")


# ---- images -----------------------------------------------------------------------------

GRAY = 200


def odd_images() -> dict:
    """One constant GRAY picture per unusual mode (name -> PIL image), 12x10 so the crop resizes."""
    size = (12, 10)
    palette = Image.new("P", size, 0)
    palette.putpalette([GRAY, GRAY, GRAY] + [0] * 765)
    return {
        "palette.png": palette,
        "gray16.png": Image.fromarray(np.full(size[::-1], GRAY * 257, dtype=np.uint16)),  # 16-bit: I;16
        "int32.tif": Image.fromarray(np.full(size[::-1], GRAY, dtype=np.int32)),
        "rgba.png": Image.new("RGBA", size, (GRAY, GRAY, GRAY, 255)),
        "la.png": Image.new("LA", size, (GRAY, 255)),
        "cmyk.jpg": Image.new("CMYK", size, (0, 0, 0, 255 - GRAY)),
        "float.tif": Image.fromarray(np.full(size[::-1], GRAY, dtype=np.float32)),
        "plain.bmp": Image.new("L", size, GRAY),
    }


def image_folder(root):
    root.mkdir()
    for name, image in odd_images().items():
        image.save(root / name)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[:300])
    (root / "zero.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "README").write_text("x")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_odd_image_modes_load_as_the_same_gray(tmp_path, channels):
    root = tmp_path / "odd"
    root.mkdir()
    images = odd_images()
    for name, image in images.items():
        image.save(root / name)
    ds = load_dataset(str(root), "train", 8, channels)
    assert len(ds) == len(images)
    for i, (path, _) in enumerate(ds.files):
        pixels, label = ds[i]
        assert pixels.dtype == torch.uint8 and pixels.shape == (channels, 8, 8) and int(label) == -1
        assert abs(pixels.float().mean().item() - GRAY) <= 2, path.name  # JPEG may round a little
    assert ds.bad == 0


def test_transparent_pixels_are_white_at_any_channel_count(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    for channels in (1, 3):
        pixels, _ = load_dataset(str(tmp_path), "train", 8, channels)[0]
        assert int(pixels.min()) == 255


def test_broken_images_are_skipped_and_counted(tmp_path, capsys):
    root = image_folder(tmp_path / "mixed")
    ds = load_dataset(str(root), "train", 8, 1)
    assert "skipped 3 non-image file(s)" in capsys.readouterr().err
    values = [ds[i][0] for i in range(len(ds))]
    # truncated.png and zero.png sort last: reading the first fails on both before wrapping round, the
    # second once; each read that fails is counted and replaced by the next readable picture.
    assert ds.bad == 3
    assert all(abs(v.float().mean().item() - GRAY) <= 2 for v in values)
    assert "unreadable image" in capsys.readouterr().err


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    Image.new("L", (8, 8), GRAY).save(tmp_path / "a.png")
    Image.new("L", (40, 40), 0).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1600 pixels > 2x the limit: PIL refuses b.png
    ds = load_dataset(str(tmp_path), "train", 8, 1)
    pixels, _ = ds[1]
    assert ds.bad == 1 and int(pixels.float().mean()) == GRAY


def test_training_on_a_messy_folder_through_the_cli(tmp_path):
    root = image_folder(tmp_path / "mixed")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**json.loads(tiny_config().to_json()), "num_classes": 0}))
    code, _out, err = run_cli("train", "--config", config, "--data", root, "--out", tmp_path / "run",
                         "--steps", "2", "--batch-size", "4", "--sample-every", "0", "--device", "cpu")
    assert code == 0, err
    assert "skipped 3 non-image file(s)" in err and "unreadable image" in err and "Traceback" not in err
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_folders_without_usable_images_are_one_line(trained, tmp_path):
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "a.txt").write_text("x")
    all_broken = tmp_path / "broken"
    all_broken.mkdir()
    for i in range(3):
        (all_broken / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * i)
    checkpoint = trained / "run"
    code, _, err = run_cli("nll", "--checkpoint", checkpoint, "--data", only_text)
    assert_one_line_error(code, err, "nll", "no images found")
    code, _, err = run_cli("nll", "--checkpoint", checkpoint, "--data", all_broken)
    lines = err.strip().splitlines()
    assert code != 0 and "Traceback" not in err
    assert lines[-1].startswith("fractalgen nll: error: ") and "3 unreadable images in a row" in lines[-1]
    assert all(line.startswith("note: unreadable image") for line in lines[:-1])


# ---- never lose a checkpoint -------------------------------------------------------------------

def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path):
    from fractalgen.files import atomic_write

    target = tmp_path / "checkpoint.pt"
    atomic_write(lambda f: f.write(b"good"), target)

    def crash_half_way(f):
        f.write(b"half a checkp")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(crash_half_way, target)
    assert target.read_bytes() == b"good"  # the old file was never opened for writing
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # and the temporary file is gone
    atomic_write(lambda f: f.write(b"newer"), target)
    assert target.read_bytes() == b"newer"
