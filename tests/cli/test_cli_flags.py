"""Every flag value is checked as it is parsed: one line naming the flag the user gave, exit 2, never a
traceback, never a silent substitution (--epochs 0 is an error, not the default ten epochs).

The property tests throw random flag values and random checkpoint metadata at the command line.
"""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from frame import run_cli, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import fractalgen
from fractalgen.config import LEGACY_DEFAULTS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny 8x8 gray checkpoint, its data, a picture to inpaint."""
    root = tmp_path_factory.mktemp("flags")
    torch.manual_seed(0)
    fractalgen.save(fractalgen.build(tiny_config()), root / "tiny.safetensors")
    from PIL import Image

    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(root / "digit.png")
    np.savez(root / "d.npz", images=np.zeros((8, 8, 8), dtype=np.uint8), labels=np.arange(8) % 2)
    return root


BAD_FLAGS = [  # (command line after the command's required part, the flag the error must name, words)
    ("train", ["--epochs", "0"], "--epochs", "> 0"),
    ("train", ["--epochs", "-1"], "--epochs", "> 0"),
    ("train", ["--epochs", "nan"], "--epochs", "finite"),
    ("train", ["--steps", "0"], "--steps", ">= 1"),
    ("train", ["--lr", "0"], "--lr", "> 0"),
    ("train", ["--lr", "inf"], "--lr", "finite"),
    ("train", ["--blr", "-0.0001"], "--blr", "> 0"),
    ("train", ["--warmup-steps", "-1"], "--warmup-steps", ">= 0"),
    ("train", ["--warmup-epochs", "nan"], "--warmup-epochs", "finite"),
    ("train", ["--grad-clip", "0"], "--grad-clip", "> 0"),
    ("train", ["--sample-every", "-1"], "--sample-every", ">= 0"),
    ("train", ["--save-every", "0"], "--save-every", ">= 1"),
    ("train", ["--num-workers", "-2"], "--num-workers", ">= 0"),
    ("train", ["--num-workers", "257"], "--num-workers", "<= 256"),
    ("train", ["--seed", "-1"], "--seed", ">= 0"),
    ("train", ["--seed", str(2**40)], "--seed", "<= 2147483647"),
    ("train", ["--batch-size", "0"], "--batch-size", ">= 1"),
    ("train", ["--shift", "65"], "--shift", "<= 64"),
    ("train", ["--lr", "nan"], "--lr", "finite"),
    ("train", ["--mar-masks", "random"], "--mar-masks", "invalid choice"),
    ("train", ["--label-drop", "1"], "--label-drop", "< 1"),
    ("train", ["--threads", "0"], "--threads", "between 1"),
    ("train", ["--threads", "many"], "--threads", "integer"),
    ("train", ["--device", "meta"], "--device", "unknown device 'meta'"),
    ("train", ["--device", "gpu"], "--device", "unknown device"),
    ("sample", ["--cfg", "nan"], "--cfg", "finite"),
    ("sample", ["--cfg", "inf"], "--cfg", "finite"),
    ("sample", ["--cfg", "1e300"], "--cfg", "<="),
    ("sample", ["--temperature", "0"], "--temperature", "> 0"),
    ("sample", ["--temperature", "nan"], "--temperature", "finite"),
    ("sample", ["--filter-threshold", "-1"], "--filter-threshold", ">= 0"),
    ("sample", ["--num-iter", "0,4"], "--num-iter", "positive integers"),
    ("sample", ["--num-iter", "a,b"], "--num-iter", "positive integers"),
    ("sample", ["--classes", "1,,2"], "--classes", "integers >= 0"),
    ("sample", ["--classes", "1.5"], "--classes", "integers >= 0"),
    ("sample", ["--classes", "-1"], "--classes", "integers >= 0"),
    ("sample", ["--per-class", "0"], "--per-class", ">= 1"),
    ("sample", ["--n", "-3"], "--n", ">= 1"),
    ("sample", ["--batch-size", "0"], "--batch-size", ">= 1"),
    ("inpaint", ["--temperature", "0"], "--temperature", "> 0"),
    ("inpaint", ["--label", "1.5"], "--label", "integer"),
    ("inpaint", ["--label", "cat"], "--label", "integer"),
    ("inpaint", ["--samples", "0"], "--samples", ">= 1"),
    ("uncrop", ["--fraction", "0"], "--fraction", "> 0"),
    ("nll", ["--passes", "0"], "--passes", ">= 1"),
    ("nll", ["--limit", "0"], "--limit", ">= 1"),
    ("eval-samples", ["--temperature", "0"], "--temperature", "> 0"),
    ("evaluate", ["--temperature", "0"], "--temperature", "> 0"),
    ("ref-stats", ["--keep-features", "-1"], "--keep-features", ">= 0"),
]


def base_argv(command, files, out):
    return {
        "train": ["train", "--preset", "tiny_ar", "--out", out],
        "sample": ["sample", "--checkpoint", files / "tiny.safetensors", "--out", out],
        "inpaint": ["inpaint", "--checkpoint", files / "tiny.safetensors", "--image", files / "digit.png",
                    "--box", "0,0,4,4", "--out", out],
        "uncrop": ["uncrop", "--checkpoint", files / "tiny.safetensors", "--image", files / "digit.png", "--out", out],
        "nll": ["nll", "--checkpoint", files / "tiny.safetensors", "--data", files / "d.npz"],
        "eval-samples": ["eval-samples"],
        "evaluate": ["evaluate", "--out", out],
        "ref-stats": ["ref-stats", "mnist", "--out", out / "s.npz"],
    }[command]


@pytest.mark.parametrize("command, flags, flag, words", BAD_FLAGS, ids=[" ".join([c, *f]) for c, f, *_ in BAD_FLAGS])
def test_bad_flag_values_are_one_line_naming_the_flag(command, flags, flag, words, files, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(*base_argv(command, files, out), *flags)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"fractalgen {command}: error: argument {flag}") and words in lines[0], lines[0]
    named = {w.rstrip(":,") for w in lines[0].split() if w.startswith("--") and w != "--help)"}
    assert named == {flag}, lines[0]  # no flag the user did not give
    assert not out.exists()  # refused before any work


def test_temperature_zero_is_refused_alike_everywhere(files, tmp_path):
    lines = set()
    for command in ("sample", "inpaint", "eval-samples", "evaluate"):
        _, _, err = run_cli(*base_argv(command, files, tmp_path / "out"), "--temperature", "0")
        lines.add(err.split("error: ", 1)[1].split(" (see")[0])
    assert lines == {"argument --temperature: must be > 0, got 0"}


def test_label_out_of_range_and_float_labels_in_the_library(files):
    model = fractalgen.load(files / "tiny.safetensors")
    for labels in ([1.5], ["cat"], [True], torch.tensor([0.5])):
        with pytest.raises(ValueError, match="class labels must be integers"):
            fractalgen.sample(model, labels=labels, num_iter=(1, 1))
    assert fractalgen.sample(model, labels=[np.int64(1)], num_iter=(1, 1), seed=0).shape == (1, 1, 8, 8)


def test_output_folder_is_checked_before_the_long_work(files, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    code, _, err = run_cli("sample", "--checkpoint", files / "tiny.safetensors", "--n", "1", "--out", blocked / "out")
    assert code == 2 and "cannot write to output folder" in err and "sampled" not in err
    code, _, err = run_cli("ref-stats", "mnist", "--out", blocked / "s.npz", "--features", "mnist-classifier")
    assert code == 2 and "cannot write to output folder" in err, err
    code, out, err = run_cli(*base_argv("inpaint", files, blocked / "out"))
    assert code == 2 and "cannot write to output folder" in err and not out, err


# ---- properties: random flags and random metadata ---------------------------------------------

NUMBERS = st.one_of(st.integers(-10, 10).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["0", "-0", "1e400", "nan", "inf", "", " ", "0x10", "1_000", "½"]),
                    st.text(max_size=6))
SAMPLE_FLAGS = {
    "--cfg": NUMBERS, "--temperature": NUMBERS, "--filter-threshold": NUMBERS, "--seed": NUMBERS,
    "--num-iter": st.one_of(NUMBERS, st.lists(st.integers(-1, 3), min_size=1, max_size=3).map(
        lambda v: ",".join(map(str, v)))),
    "--classes": st.one_of(NUMBERS, st.lists(st.integers(-1, 3), max_size=3).map(lambda v: ",".join(map(str, v)))),
    "--per-class": st.one_of(st.integers(-2, 2).map(str), st.text(max_size=3)),
    "--n": st.one_of(st.integers(-2, 3).map(str), st.text(max_size=3)),
    "--batch-size": st.one_of(st.integers(-2, 3).map(str), st.text(max_size=3)),
    "--cfg-schedule": st.sampled_from(["linear", "constant", "cubic", ""]),
    "--device": st.sampled_from(["cpu", "meta", "cuda:x", "auto", "", "cpu:0"]),
    "--threads": st.sampled_from(["1", "0", "-1", "auto", "x"]),
}
TRAIN_FLAGS = ["--steps", "--epochs", "--batch-size", "--lr", "--blr", "--weight-decay", "--warmup-steps",
               "--warmup-epochs", "--grad-clip", "--seed", "--save-every", "--sample-every", "--num-workers",
               "--label-drop", "--threads", "--device"]


def snapshot(root):
    """Every path under root with its size and modification time."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.dictionaries(st.sampled_from(sorted(SAMPLE_FLAGS)), st.just(None), max_size=5).flatmap(
    lambda chosen: st.fixed_dictionaries({k: SAMPLE_FLAGS[k] for k in chosen})))
def test_random_sample_flags_end_in_work_or_one_line(flags, files, tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    out = root / "out"
    before = snapshot(files)
    argv = ["sample", "--checkpoint", files / "tiny.safetensors", "--out", out]
    for flag, value in flags.items():
        argv += [f"{flag}={value}"]  # '=' so that values starting with '-' stay values
    code, _, err = run_cli(*argv)
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("fractalgen sample: error: "), err
    assert snapshot(files) == before  # nothing outside the output folder changed
    assert {p.parent for p in map(__import__("pathlib").Path, snapshot(root))} <= {out}


@settings(max_examples=60, deadline=None)
@given(flags=st.dictionaries(st.sampled_from(TRAIN_FLAGS), NUMBERS, max_size=6))
def test_random_train_flags_parse_or_exit_2(flags):
    from fractalgen.cli import build_parser

    argv = ["train", "--preset", "tiny_ar", "--out", "never-used"]
    for flag, value in flags.items():
        argv.append(f"{flag}={value}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
            return
    for dest in ("epochs", "lr", "blr", "grad_clip"):  # what was accepted is usable
        value = getattr(args, dest)
        assert value is None or (np.isfinite(value) and value > 0)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config_changes=st.dictionaries(st.sampled_from(sorted([*json.loads(tiny_config().to_json()), *LEGACY_DEFAULTS])),
                                      JSON_VALUES, max_size=2),
       sampling=st.one_of(st.none(), st.text(max_size=8), JSON_VALUES.map(json.dumps),
                          st.dictionaries(st.sampled_from(["cfg", "temperature", "num_iter", "cfg_schedule",
                                                           "filter_threshold", "other"]), JSON_VALUES,
                                          max_size=3).map(json.dumps)))
def test_random_metadata_ends_in_work_or_one_line(config_changes, sampling, files, tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    model = fractalgen.load(files / "tiny.safetensors")
    config = {**json.loads(model.config.to_json()), **config_changes}
    metadata = {"config": json.dumps(config)}
    if sampling is not None:
        metadata["sampling"] = sampling
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "m.safetensors", metadata=metadata)
    code, _, err = run_cli("sample", "--checkpoint", root / "m.safetensors", "--n", "1", "--num-iter", "1,1",
                           "--out", root / "out")
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


def test_nll_never_reports_nan(files, tmp_path):
    from fractalgen.errors import UserError
    from fractalgen.likelihood import measure

    code, out, err = run_cli("nll", "--checkpoint", files / "tiny.safetensors", "--data", files / "d.npz",
                             "--limit", "1", "--split", "train", "--json")
    assert code == 0 and "nan" not in out.lower(), out + err  # one image: no standard error, not "nan"
    assert json.loads(out.strip().splitlines()[-1])["stderr"] is None
    model = fractalgen.load(files / "tiny.safetensors")
    with torch.no_grad():  # finite weights whose logits overflow to infinity
        for p in model.parameters():
            p.mul_(1e30)
    with pytest.raises(UserError, match="likelihood is not finite"):
        measure(model, str(files / "d.npz"), "train")


@pytest.mark.parametrize("flags", [["--n", "100000000000000"], ["--per-class", "100000000000000"]])
def test_counts_whose_images_cannot_fit_are_one_line(tmp_path, flags):
    """Refused before a label is listed per image (a list of 10**14 labels was built before), naming the flag."""
    code, _, err = run_cli("sample", *flags, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: {flags[0]} = 100000000000000 asks for" in err and "GiB of images, more than the" in err
    assert not (tmp_path / "out").exists()
