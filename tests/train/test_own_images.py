"""Your own images: classes from the folder, the data summary and checks, the measured defaults, --init."""
import json

import numpy as np
import pytest
import torch
from frame import TINY, run_cli
from PIL import Image

import fractalgen
from benchmarks.shapes import CLASSES, make_shapes
from fractalgen.cli import main
from fractalgen.config import ModelConfig, config_and_presets
from fractalgen.errors import UserError
from fractalgen.train import (
    TrainOptions,
    default_batch,
    default_lr,
    lr_warning,
    read_checkpoint,
    schedule,
    train,
)


def options(tmp_path, data, name="run", **changes):
    base = {"out": str(tmp_path / name), "data": str(data), "steps": 2, "batch_size": 4, "lr": 1e-3,
            "warmup_steps": 0, "save_every": 2, "sample_every": 0, "device": "cpu"}
    return TrainOptions(**{**base, **changes})


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny shapes folder: 8x8 RGB, 4 class folders, 8 training and 4 held-out images."""
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", train=8, val=4, size=8)


@pytest.fixture(scope="module")
def shapes_run(shapes, tmp_path_factory):
    """The default model trained for two steps on the shapes folder (neither preset nor config)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(shapes), "--out", str(out), "--steps", "2", "--sample-every", "0",
                 "--device", "cpu"]) == 0
    return out


# ---- classes from the data ------------------------------------------------------------------------

def test_class_folders_set_the_classes_and_their_names_travel_everywhere(shapes_run, tmp_path):
    stored = ModelConfig.from_dict(read_checkpoint(shapes_run)["config"])
    assert stored.num_classes == 4 and stored.class_names == CLASSES  # the run's checkpoint
    model = fractalgen.load(shapes_run / "model.safetensors")
    assert model.class_names == CLASSES  # the weights' metadata
    folder = fractalgen.save_pretrained(model, tmp_path / "folder")
    config = json.loads((folder / "config.json").read_text())
    assert config["class_num"] == 4 and config["id2label"] == {str(i): n for i, n in enumerate(CLASSES)}
    assert "circle, cross, square, triangle" in (folder / "README.md").read_text()  # the card
    assert fractalgen.load(folder).class_names == CLASSES


def test_a_preset_takes_the_datas_classes_an_explicit_count_must_agree(shapes, tmp_path):
    config = ModelConfig.from_dict({**TINY, "num_classes": 10})
    train(config, options(tmp_path, shapes, "preset"), classes_from_data=True)
    assert fractalgen.load(tmp_path / "preset" / "model.safetensors").class_names == CLASSES
    with pytest.raises(UserError, match="the model has 10 classes, .* 4 classes"):
        train(config, options(tmp_path, shapes, "explicit"))
    assert not (tmp_path / "explicit").exists()  # refused before anything is written


def test_a_config_file_naming_its_class_count_is_explicit(shapes, tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({**TINY, "num_classes": 3}))
    code, _, err = run_cli("train", "--config", tmp_path / "c.json", "--data", shapes, "--out", tmp_path / "r",
                           "--steps", "1", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "3 classes" in err, err
    (tmp_path / "c.json").write_text(json.dumps({k: v for k, v in TINY.items() if k != "num_classes"}))
    code, out, err = run_cli("train", "--config", tmp_path / "c.json", "--data", shapes, "--out",
                             tmp_path / "r", "--dry-run")
    assert code == 0 and "(4 classes)" in out, err


def test_a_folder_without_class_folders_trains_an_unconditional_model(shapes, tmp_path):
    flat = shapes / "train" / "circle"
    train(ModelConfig.from_dict(TINY), options(tmp_path, flat, batch_size=2), classes_from_data=True)
    model = fractalgen.load(tmp_path / "run" / "model.safetensors")
    assert model.config.num_classes == 0 and model.class_names is None


def test_checkpoints_without_names_keep_their_numbers(tmp_path):
    model = fractalgen.build(ModelConfig.from_dict(TINY))
    assert model.class_names is None
    fractalgen.save_pretrained(model, tmp_path / "f")
    assert "id2label" not in json.loads((tmp_path / "f" / "config.json").read_text())
    assert fractalgen.load(tmp_path / "f").class_names is None
    a = fractalgen.sample(model, labels=[1, 0], seed=3)
    assert torch.equal(a, fractalgen.sample(model, labels=["1", "0"], seed=3))  # numbers as text still work


def test_bad_id2label_is_one_error(tmp_path):
    model = fractalgen.build(ModelConfig.from_dict({**TINY, "class_names": ["a", "b"]}))
    folder = fractalgen.save_pretrained(model, tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    for bad in ({"0": "a"}, {"0": "a", "2": "b"}, ["a", "b"], {"0": "a", "1": "a"}):
        (folder / "config.json").write_text(json.dumps({**config, "id2label": bad}))
        with pytest.raises(fractalgen.CheckpointError):
            fractalgen.load(folder)


def test_sampling_by_class_name(tmp_path):
    model = fractalgen.build(ModelConfig.from_dict({**TINY, "class_names": ["left", "top"]}))
    by_name = fractalgen.sample(model, labels=["top", "left"], seed=0)
    assert torch.equal(by_name, fractalgen.sample(model, labels=[1, 0], seed=0))
    with pytest.raises(ValueError, match="unknown class 'round' .*left, top"):
        fractalgen.sample(model, labels=["round"])
    fractalgen.save(model, tmp_path / "m.safetensors")
    code, _, _ = run_cli("sample", "--checkpoint", tmp_path / "m.safetensors", "--classes", "top",
                         "--per-class", "2", "--out", tmp_path / "s", "--device", "cpu")
    assert code == 0 and len(list((tmp_path / "s").glob("*class1.png"))) == 2
    code, _, err = run_cli("sample", "--checkpoint", tmp_path / "m.safetensors", "--classes", "top,round",
                           "--out", tmp_path / "t", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "left, top" in err, err
    assert not (tmp_path / "t").exists()


# ---- the data summary and checks -------------------------------------------------------------------

def test_dry_run_prints_the_summary_and_writes_nothing(shapes, tmp_path):
    code, out, err = run_cli("train", "--data", shapes, "--out", tmp_path / "r", "--dry-run")
    assert code == 0, err
    assert "train 8, val 4 images" in out and "4 classes: circle 2, cross 2, square 2, triangle 2" in out
    assert "images 8x8, RGB" in out and "dry run" in out
    assert not (tmp_path / "r").exists()


def test_size_and_colour_mismatches_say_what_is_done(shapes, tmp_path):
    code, out, err = run_cli("train", "--preset", "mnist_ar", "--data", shapes, "--out", tmp_path / "r",
                             "--batch-size", "4", "--dry-run")
    assert code == 0, err
    assert "the model 28x28: each is resized" in out
    assert "RGB images are converted to grayscale" in out
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(8):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8), "L").save(gray / f"{i}.png")
    code, out, err = run_cli("train", "--preset", "tiny_ar", "--data", gray, "--out", tmp_path / "r",
                             "--dry-run")
    assert code == 0 and "grayscale images are repeated over 3 channels" in out and "no classes" in out, err


def test_an_array_that_cannot_fit_is_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "big.npz", images=np.zeros((8, 28, 28), np.uint8))
    code, _, err = run_cli("train", "--preset", "tiny_ar", "--data", tmp_path / "big.npz",
                             "--out", tmp_path / "r", "--steps", "1")
    assert code == 2 and "28x28, the model needs 16x16" in err and not (tmp_path / "r").exists()


# ---- the measured defaults -------------------------------------------------------------------------

def test_defaults_follow_the_measured_rules():
    small, wide = ModelConfig.from_dict(TINY), ModelConfig.from_dict({**TINY, "widths": [64, 8, 8]})
    assert default_lr(wide, 32) < default_lr(small, 32) == default_lr(small, 8)  # width matters, batch not
    assert default_batch(200) == 16 and default_batch(10**6) == 64 and default_batch(5) == 5
    plan = schedule(TrainOptions(out="x"), small, 200, 1)
    assert plan["lr"] == default_lr(small, plan["batch"]) and 0 < plan["warmup"] < plan["total"] // 2
    assert plan["total"] >= 600  # a few hundred images get many passes
    official = schedule(TrainOptions(out="x", blr=5e-5, batch_size=32), small, 200, 1)
    assert official["lr"] == pytest.approx(5e-5 * 32 / 256)  # --blr: the official scaling
    assert schedule(TrainOptions(out="x", epochs=2, batch_size=20), small, 200, 1)["total"] == 20


def test_an_lr_far_from_the_rule_gets_one_warning(shapes, tmp_path):
    config = ModelConfig.from_dict(TINY)
    rule = default_lr(config, 32)
    assert lr_warning(rule * 3, config, 32) is None
    assert "far from" in lr_warning(rule / 100, config, 32) and "far from" in lr_warning(rule * 100, config, 32)
    code, _, err = run_cli("train", "--preset", "tiny_ar", "--data", shapes, "--out", tmp_path / "r",
                           "--lr", "6.25e-6", "--dry-run")
    assert code == 0 and len([line for line in err.splitlines() if "far from" in line]) == 1, err


# ---- fine-tuning -------------------------------------------------------------------------------------

def test_init_starts_from_the_weights_with_a_fresh_schedule_and_a_new_class_embedding(shapes_run, shapes, tmp_path):
    flat = shapes / "train" / "square"  # no classes: the 4-class embedding cannot be kept
    code, out, err = run_cli("train", "--init", shapes_run, "--data", flat, "--out", tmp_path / "ft",
                             "--steps", "1", "--batch-size", "2", "--lr", "1e-9", "--sample-every", "0",
                             "--device", "cpu")
    assert code == 0, err
    assert "has 4 classes, this run 0: the class embedding starts afresh" in out
    state = read_checkpoint(tmp_path / "ft")
    assert state["step"] == 1  # a fresh schedule: step 1 of 1, not the initial run's step count
    before = fractalgen.load(shapes_run / "model.safetensors").state_dict()
    after = state["model"]
    shared = [k for k in after if k in before and not k.startswith("class_embed")]
    assert shared and all(torch.allclose(after[k], before[k], atol=1e-5) for k in shared)
    code, _, err = run_cli("train", "--init", shapes_run, "--preset", "mnist_ar", "--data", shapes,
                           "--out", tmp_path / "bad", "--steps", "1", "--batch-size", "2")
    assert code == 2 and "--init" in err and len(err.strip().splitlines()) == 1, err


# ---- the recommended guidance, measured at the end of a run ---------------------------------------

def test_the_judge_learns_classes_a_glance_tells_apart():
    from fractalgen.guidance import train_judge

    generator = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 60, (16, 3, 8, 8), generator=generator, dtype=torch.uint8)
    bright = torch.randint(190, 256, (16, 3, 8, 8), generator=generator, dtype=torch.uint8)
    images, labels = torch.cat([dark, bright]), torch.tensor([0] * 16 + [1] * 16)
    judge = train_judge(images, labels, 2, steps=60)
    assert judge.accuracy(images, labels) == 1.0
    assert judge.accuracy(images, 1 - labels) == 0.0


class ScriptedJudge:
    """Recognition rates given in advance, one per candidate scale in turn."""

    def __init__(self, rates):
        self.rates = iter(rates)

    def accuracy(self, images, labels):
        return next(self.rates)


@pytest.mark.parametrize("rates, chosen", [
    ([0.30, 0.50, 0.90, 0.93, 0.95], 2.0),  # the smallest scale within 0.05 of the best
    ([0.97, 0.95, 0.98, 0.99, 0.99], 1.0),  # classes already visible: no guidance needed
    ([0.25, 0.25, 0.25, 0.25, 0.60], 4.0),
])
def test_the_smallest_scale_near_the_best_is_recommended(rates, chosen):
    from fractalgen.guidance import CANDIDATES, choose_guidance

    model = fractalgen.build(ModelConfig.from_dict(TINY))
    choice = choose_guidance(model, ScriptedJudge(rates), per_class=1)
    assert choice.cfg == chosen
    assert choice.recognised == dict(zip(CANDIDATES, rates, strict=True))
    assert f"recommended cfg {chosen:g}" in choice.summary()


def test_guidance_is_measured_only_where_it_means_something():
    from fractalgen.guidance import can_choose, choose_guidance

    assert can_choose(fractalgen.build(ModelConfig.from_dict(TINY)))
    for changes in ({"num_classes": 0}, {"label_drop_prob": 0.0}, {"num_classes": 1000}):
        model = fractalgen.build(ModelConfig.from_dict({**TINY, **changes}))
        assert not can_choose(model)
        with pytest.raises(ValueError, match="class-conditional"):
            choose_guidance(model, ScriptedJudge([1.0] * 5))


def test_a_finished_class_conditional_run_stores_its_measured_guidance(shapes, tmp_path, monkeypatch, capsys):
    import fractalgen.train as training

    monkeypatch.setattr(training, "JUDGE_MIN_ACCURACY", 0.0)  # a tiny folder: any judge will do here
    chosen = []
    real = training.choose_guidance

    def choose(model, judge, **kwargs):
        chosen.append(real(model, judge, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(training, "choose_guidance", choose)
    monkeypatch.setattr(training, "GUIDANCE_MIN_STEPS", 2)
    train(None, options(tmp_path, shapes, steps=2))
    assert len(chosen) == 1 and "guidance: samples recognised" in capsys.readouterr().out
    model = fractalgen.load(tmp_path / "run" / "model.safetensors")
    assert fractalgen.resolve_settings(model).cfg == chosen[0].cfg
    monkeypatch.setattr(training, "GUIDANCE_MIN_STEPS", 3)  # too short a run: the config's scale is kept
    train(None, options(tmp_path, shapes, name="short", steps=2))
    assert len(chosen) == 1
    assert fractalgen.resolve_settings(fractalgen.load(tmp_path / "short" / "model.safetensors")).cfg == 1.0


def test_a_preset_with_its_own_guidance_keeps_it(shapes, tmp_path, monkeypatch):
    import fractalgen.train as training

    monkeypatch.setattr(training, "GUIDANCE_MIN_STEPS", 2)
    monkeypatch.setattr(training, "choose_guidance", lambda *a, **k: pytest.fail("measured a preset's guidance"))
    # a config file's fields with a sampling setting beside them: the model's recommendation
    config, presets = config_and_presets({**TINY, "channels": 3, "num_classes": 4, "cfg": 2.5,
                                          "pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3})
    train(config, options(tmp_path, shapes, steps=2), presets=presets)
    assert fractalgen.resolve_settings(fractalgen.load(tmp_path / "run" / "model.safetensors")).cfg == 2.5
