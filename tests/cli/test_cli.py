"""The command line: every --help, a tiny train -> sample -> nll run, and bad input as one-line errors."""
import json
import os
import re
import stat

import numpy as np
import pytest
import torch
from frame import ROOT, TINY, last_json, run_cli
from PIL import Image

import fractalgen
from fractalgen.cli import build_parser, main

MY_COMMANDS = ["train", "sample", "nll", "demo", "eval-samples"]


@pytest.mark.parametrize("command", MY_COMMANDS)
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "(default:" in out


def test_every_registered_command_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(MY_COMMANDS) <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "usage" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny config trained for a few steps on a few 8x8 pictures (shared by the tests below)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.json").write_text(json.dumps(TINY))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    np.savez(root / "digits.npz", images=images, labels=np.arange(12) % 2)
    code = main(["train", "--config", str(root / "tiny.json"), "--data", str(root / "digits.npz"), "--out",
                 str(root / "run"), "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--no-flip",
                 "--save-every", "2", "--sample-every", "3", "--device", "cpu", "--json"])
    assert code == 0
    return root


def test_train_writes_checkpoint_weights_and_samples(tiny_run):
    run_dir = tiny_run / "run"
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "model.safetensors").is_file()
    assert list((run_dir / "samples").glob("step*.png"))
    model = fractalgen.load(run_dir)
    assert model.config.img_sizes == (8, 2, 1)


def test_train_resume_continues_to_more_steps(tiny_run, tmp_path):
    import shutil

    shutil.copytree(tiny_run / "run", tmp_path / "run")
    code, out, _ = run_cli("train", "--resume", tmp_path / "run", "--steps", "5", "--sample-every", "0", "--json")
    assert code == 0 and last_json(out)["step"] == 5  # data, batch size and lr come from the stored run
    assert "lr 0.001" in out and "global batch 4" in out
    code, _, err = run_cli("train", "--config", tiny_run / "tiny.json", "--out", tmp_path / "run")
    assert code == 2 and "already holds a training run" in err  # never trains over an existing run


def test_sample_precision_flag(tiny_run, tmp_path, capsys, autocast_seen):
    """--precision reaches the sampler (bf16 autocast on around the model; auto is fp32 on a CPU) and is
    reported; an unknown name is one error line before any work."""
    for precision in ("auto", "fp32", "bf16"):
        autocast_seen.clear()
        code, out, _ = run_cli("sample", "--checkpoint", tiny_run / "run", "--n", "8", "--out",
                               tmp_path / precision, "--precision", precision, "--device", "cpu", "--json")
        assert code == 0 and last_json(out)["precision"] == ("fp32" if precision == "auto" else precision)
        assert f"num_iter 16,4, {last_json(out)['precision']}" in out
        assert autocast_seen == [precision == "bf16"]
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--checkpoint", str(tiny_run / "run"), "--precision", "fp16", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--precision" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_sample_writes_grid_images_and_gif(tiny_run, tmp_path):
    out_dir = tmp_path / "samples"
    code, out, _ = run_cli("sample", "--checkpoint", tiny_run / "run", "--classes", "0,1", "--per-class", "2",
                           "--out", out_dir, "--gif", tmp_path / "gen.gif", "--device", "cpu", "--json")
    assert code == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["00000_class0.png", "00001_class0.png", "00002_class1.png", "00003_class1.png", "grid.png"]
    assert Image.open(out_dir / "00000_class0.png").size == (8, 8)
    gif = Image.open(tmp_path / "gen.gif")
    assert gif.n_frames == 4 * 4  # one frame per level-0 step (a 4x4 grid of patches)
    assert last_json(out)["images"] == 4
    code, _, err = run_cli("sample", "--checkpoint", tiny_run / "run", "--n", "2", "--out", tmp_path / "u")
    assert code == 0 and (tmp_path / "u" / "00001_uncond.png").is_file()
    before = (tmp_path / "u" / "grid.png").read_bytes()
    # A second run into the same folder writes into a fresh numbered subfolder, and says so.
    for expected in ("002", "003"):
        code, out, err = run_cli("sample", "--checkpoint", tiny_run / "run", "--n", "2", "--seed", "1", "--out",
                                 tmp_path / "u", "--json")
        assert code == 0 and f"writes into {tmp_path / 'u' / expected}" in err
        assert last_json(out)["out"] == str(tmp_path / "u" / expected)
        assert (tmp_path / "u" / expected / "grid.png").is_file()
    assert (tmp_path / "u" / "grid.png").read_bytes() == before  # the first run's files are kept
    code, _, err = run_cli("sample", "--checkpoint", tiny_run / "run", "--n", "2", "--seed", "1", "--out",
                           tmp_path / "u", "--overwrite")
    assert code == 0 and "writes into" not in err
    assert (tmp_path / "u" / "grid.png").read_bytes() == (tmp_path / "u" / "002" / "grid.png").read_bytes()
    assert not (tmp_path / "u" / "004").exists()


def test_resume_at_the_final_step_changes_nothing(tiny_run, tmp_path):
    import shutil

    shutil.copytree(tiny_run / "run", tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    code, out, err = run_cli("train", "--resume", tmp_path / "run", "--json")
    assert code == 0 and "already at step 3" in out and "nan" not in out.lower()
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before  # the checkpoint and the weights are left as they were


def test_nll_reports_bits_per_dim_with_stderr(tiny_run):
    code, out, _ = run_cli("nll", "--checkpoint", tiny_run / "run", "--data", tiny_run / "digits.npz",
                           "--device", "cpu", "--json")
    result = last_json(out)
    assert code == 0 and "bits/dim" in out
    assert set(result) == {"bits_per_dim", "stderr", "images", "passes", "per_image"} and result["images"] == 12
    model = fractalgen.load(tiny_run / "run")
    images = torch.from_numpy(np.load(tiny_run / "digits.npz")["images"])[:, None]
    assert result["bits_per_dim"] == pytest.approx(fractalgen.bits_per_dim(model, images), abs=1e-5)
    assert 0 < result["stderr"] < 1


def test_sampling_defaults_come_from_the_checkpoint(tiny_run, tmp_path):
    model = fractalgen.load(tiny_run / "run")
    fractalgen.save(model, tmp_path / "m.safetensors", dtype=torch.bfloat16,
                    sampling={"cfg": 3.5, "temperature": 0.9})
    code, out, _ = run_cli("sample", "--checkpoint", tmp_path / "m.safetensors", "--n", "1", "--out",
                           tmp_path / "s", "--json")
    settings = last_json(out)
    assert code == 0 and settings["cfg"] == 3.5 and settings["temperature"] == 0.9
    code, out, _ = run_cli("sample", "--checkpoint", tmp_path / "m.safetensors", "--n", "1", "--cfg", "1.5",
                           "--out", tmp_path / "s2", "--json")
    assert last_json(out)["cfg"] == 1.5


def one_line_error(code, err, *words):
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_is_one_line(tiny_run, tmp_path):
    ckpt = tiny_run / "run"
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00garbage-not-a-header")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "big.npz", images=np.zeros((3, 16, 16), np.uint8))
    cases = [
        (["sample", "--checkpoint", tmp_path / "missing.safetensors", "--out", tmp_path / "o"], "not found"),
        (["sample", "--checkpoint", tmp_path / "corrupt.safetensors", "--out", tmp_path / "o"], "corrupt.safetensors"),
        (["sample", "--checkpoint", ckpt, "--classes", "7", "--out", tmp_path / "o"], "out of range"),
        (["sample", "--checkpoint", ckpt, "--num-iter", "1", "--out", tmp_path / "o"], "--num-iter"),
        (["nll", "--checkpoint", ckpt, "--data", tmp_path / "empty"], "no images"),
        (["nll", "--checkpoint", ckpt, "--data", tmp_path / "big.npz"], "16x16"),
        (["train", "--preset", "no_such_preset", "--out", tmp_path / "r"], "unknown preset"),
        (["train", "--config", tiny_run / "tiny.json", "--data", tiny_run / "digits.npz", "--batch-size", "64",
          "--out", tmp_path / "r2", "--device", "cpu"], "larger than the dataset"),
    ]
    for argv, words in cases:
        code, _, err = run_cli(*argv)
        one_line_error(code, err, words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_is_one_line(tiny_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    code, _, err = run_cli("sample", "--checkpoint", tiny_run / "run", "--n", "1", "--out", locked / "x")
    one_line_error(code, err, "cannot write")


def test_output_under_a_file_is_one_line(tiny_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("user data")
    code, _, err = run_cli("sample", "--checkpoint", tiny_run / "run", "--n", "1", "--out", blocker / "x")
    one_line_error(code, err, "cannot write")
    assert blocker.read_text() == "user data"


def test_demo_writes_its_files(tiny_run, tmp_path, monkeypatch):
    """The demo on a tiny 28x28 model (the bundled one is exercised by `make demo`)."""
    config = dict(TINY, img_sizes=[28, 7, 1], name="tiny28")
    torch.manual_seed(0)
    model = fractalgen.build(config)
    fractalgen.save(model, tmp_path / "m.safetensors")
    code, out, err = run_cli("demo", "--checkpoint", tmp_path / "m.safetensors", "--per-class", "3",
                             "--no-examples", "--out",
                             tmp_path / "demo", "--device", "cpu", "--json")
    assert code == 0, err
    result = last_json(out)
    for key in ("grid", "gif", "bits_per_dim_file"):
        assert (tmp_path / "demo").joinpath(os.path.basename(result[key])).is_file()
        assert result[key] in out
    cell = (28 + 2) * 2  # an image and its padding, scaled 2x
    assert Image.open(result["grid"]).size == (3 * cell + 4, 2 * cell + 4)  # one row per class, 3 per row
    assert 7.5 < result["bits_per_dim"] < 8.5  # an untrained model is near uniform over 256 values


def test_eval_samples_on_written_pngs(tmp_path):
    from fractalgen.data import mnist_split

    images, labels = mnist_split("val")
    for i in range(20):
        Image.fromarray(images[i]).save(tmp_path / f"{i:05d}_class{labels[i]}.png")
    code, out, _ = run_cli("eval-samples", "--samples", tmp_path, "--json")
    result = last_json(out)
    assert code == 0 and result["samples"] == 20 and result["accuracy"] >= 0.9  # real digits are recognised
    json_line = out.strip().splitlines()[-1]
    assert all(len(number) <= 8 for number in re.findall(r"\d+\.\d+", json_line))  # no float32 noise
    assert "{" not in "".join(out.strip().splitlines()[:-1])  # no raw dict printed before it


def test_version_and_the_presets_in_train_help(capsys):
    from fractalgen.config import PRESETS

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert capsys.readouterr().out.strip() == f"fractalgen {version}" == \
        f"fractalgen {fractalgen.__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, config in PRESETS.items():  # one line each, naming its shape
        assert sum(line.startswith(f"{name}: ") for line in lines) == 1
        assert any(line.startswith(f"{name}: ") and f"{config.img_size}x{config.img_size}" in line for line in lines)


def test_sample_grid_layout_and_scale(tiny_run, tmp_path):
    code, _, _ = run_cli("sample", "--checkpoint", tiny_run / "run", "--classes", "0", "--per-class", "4",
                         "--nrow", "1", "--scale", "3", "--out", tmp_path / "a", "--device", "cpu")
    assert code == 0  # 4 rows of one 8x8 image tripled, padding 2*3 between and around
    assert Image.open(tmp_path / "a" / "grid.png").size == (8 * 3 + 2 * 6, 4 * (8 * 3 + 6) - 6 + 2 * 6)
    code, _, err = run_cli("sample", "--checkpoint", tiny_run / "run", "--classes", "0", "--per-class", "2",
                           "--nrow", "2", "--scale", "5", "--out", tmp_path / "g", "--gif", tmp_path / "g.gif",
                           "--device", "cpu")
    assert code == 0, err  # the GIF's frames take --scale too: two 8x8 images x5, padding 2*5
    assert Image.open(tmp_path / "g.gif").size == (2 * (8 * 5 + 10) - 10 + 2 * 10, 8 * 5 + 2 * 10)
    images = fractalgen.sample(fractalgen.load(str(tiny_run / "run")), labels=[0, 1, 0, 1], seed=0, threads=None)
    fractalgen.save_grid(images, tmp_path / "auto.png")  # near-square, enlarged to a readable cell
    assert Image.open(tmp_path / "auto.png").size == (2 * (64 + 16) - 16 + 2 * 16,) * 2
    pictures = fractalgen.to_pil(images)
    assert [(p.size, p.mode) for p in pictures] == [((8, 8), images.shape[1] == 1 and "L" or "RGB")] * 4
    assert np.array_equal(np.asarray(pictures[1]).reshape(-1), images[1].permute(1, 2, 0).numpy().reshape(-1))


def test_nll_of_picture_files_per_image_with_maps_named_after_them(tmp_path):
    """Single files and folders are measured as the model reads them; --per-image prints a line each,
    --json carries every image, and each map is named after its picture."""
    from PIL import Image

    import fractalgen

    digits, _ = fractalgen.mnist_heldout()
    folder = tmp_path / "more"
    folder.mkdir()
    Image.fromarray(digits[0, 0]).save(tmp_path / "seven.png")
    for i in (1, 2):
        Image.fromarray(digits[i, 0]).save(folder / f"d{i}.png")
    result = run_cli("nll", tmp_path / "seven.png", folder, "--per-image", "--maps", tmp_path / "maps", "--json",
                     "--threads", "1")
    assert result.code == 0, result.err
    per_image = result.json["per_image"]
    assert [p["name"] for p in per_image] == ["seven", "d1", "d2"] and result.json["images"] == 3
    assert all(f"{p['name']}\t{p['bits_per_dim']:.4f}" in result.out for p in per_image)
    expected = fractalgen.nll_per_image(fractalgen.load("mnist"), torch.from_numpy(digits[:3]))
    assert [p["bits_per_dim"] for p in per_image] == pytest.approx(expected.tolist(), abs=1e-5)  # --json rounds
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["d1_map.png", "d2_map.png", "seven_map.png"]
    missing = run_cli("nll", tmp_path / "none.png")
    assert missing.code != 0 and len(missing.err.strip().splitlines()) == 1
