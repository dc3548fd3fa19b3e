"""The training loop: the recipe's pieces, a loss that falls, and a resume that continues exactly."""
import itertools
import math

import numpy as np
import pytest
import torch
from frame import tiny_config, tiny_data, train_options

import fractalgen
from fractalgen.config import PRESETS
from fractalgen.errors import UserError
from fractalgen.train import TrainOptions, lr_at, param_groups, read_checkpoint, train


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 1.0, warmup=4, total=20) for s in range(20)]
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))  # non-increasing after warm-up
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)  # half-way through the cosine


def test_weight_decay_only_on_matrices():
    model = fractalgen.build(tiny_config())
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert any(names[id(p)].endswith("norm.weight") for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_training_lowers_the_loss_and_writes_a_loadable_model(tmp_path):
    data = tiny_data(tmp_path / "d.npz")
    torch.manual_seed(0)
    images = torch.from_numpy(np.load(data)["images"])[:, None]
    before = fractalgen.bits_per_dim(fractalgen.build(tiny_config(label_drop_prob=0.0)), images)
    torch.manual_seed(0)
    train(tiny_config(), train_options(tmp_path, data, steps=40, batch_size=8, lr=1e-2, save_every=40))
    model = fractalgen.load(tmp_path / "run")
    after = fractalgen.bits_per_dim(model, images)
    assert after < before - 1.0  # 40 steps on 16 simple pictures: far below the random model


def test_resume_continues_exactly(tmp_path):
    data = tiny_data(tmp_path / "d.npz")
    train(tiny_config(), train_options(tmp_path / "a", data, steps=4))
    straight = read_checkpoint(tmp_path / "a" / "run")

    train(tiny_config(), train_options(tmp_path / "b", data, steps=2))
    assert read_checkpoint(tmp_path / "b" / "run")["step"] == 2
    train(None, train_options(tmp_path / "b", data, steps=4, resume=str(tmp_path / "b" / "run")))
    resumed = read_checkpoint(tmp_path / "b" / "run")
    assert resumed["step"] == 4 and resumed["config"] == straight["config"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key  # bit-identical on CPU


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    data = tiny_data(tmp_path / "d.npz")
    train(tiny_config(), train_options(tmp_path, data, steps=2))
    state = read_checkpoint(tmp_path / "run")
    assert {"model", "optimizer", "step", "rng", "config", "options", "data_position"} <= set(state)
    assert len(state["rng"]) == 1 and state["data_position"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_bad_training_input(tmp_path):
    data = tiny_data(tmp_path / "d.npz", n=4)
    with pytest.raises(UserError, match="larger than the dataset"):
        train(tiny_config(), train_options(tmp_path, data, batch_size=8))
    with pytest.raises(UserError, match="no training checkpoint"):
        train(None, train_options(tmp_path, data, resume=str(tmp_path / "missing")))
    wrong = tiny_data(tmp_path / "w.npz", size=12)
    with pytest.raises(UserError, match="12x12"):
        train(tiny_config(), train_options(tmp_path, wrong))


def test_grad_checkpointing_gives_the_same_step(tmp_path, monkeypatch):
    # In float64, as in test_distributed: the recomputed backward may sum in another order, which in fp32
    # can move a weight by a sizeable part of an AdamW step (at most ~lr) on some CPUs' kernels.
    monkeypatch.setattr(fractalgen.train, "FractalModel", lambda config: fractalgen.FractalModel(config).double())
    data = tiny_data(tmp_path / "d.npz")
    train(tiny_config(), train_options(tmp_path / "plain", data, steps=2, save_every=2))
    train(tiny_config(), train_options(tmp_path / "ckpt", data, steps=2, save_every=2, grad_checkpointing=True))
    a = read_checkpoint(tmp_path / "plain" / "run")["model"]
    b = read_checkpoint(tmp_path / "ckpt" / "run")["model"]
    assert a["null_class"].dtype == torch.float64
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9 * 2 * 3e-3) for k in a)  # 1e-9 of steps * lr
    assert math.isfinite(float(b["null_class"].sum()))


def test_small_presets_train_with_their_own_recipe_unless_told_otherwise():
    from fractalgen.train import PRESET_RECIPES, run_options

    recipe = PRESET_RECIPES["mnist_ar"]
    plain = run_options({"out": "x"}, preset="mnist_ar")
    assert (plain.lr, plain.batch_size, plain.flip, plain.steps) == (
        recipe["lr"], recipe["batch_size"], False, recipe["steps"])
    told = run_options({"out": "x", "lr": 1e-4, "flip": True}, preset="mnist_ar")
    assert (told.lr, told.flip, told.batch_size) == (1e-4, True, recipe["batch_size"])
    by_epochs = run_options({"out": "x", "epochs": 2.0}, preset="mnist_ar")
    assert by_epochs.steps is None and by_epochs.epochs == 2.0
    official = run_options({"out": "x"}, preset="fractalar_in64")
    assert official.lr is None and official.blr is None  # the measured rule (default_lr), not a recipe


def test_mar_masks_option_reaches_the_loss_and_is_checked(tmp_path):
    from fractalgen.train import LossModule

    with pytest.raises(UserError, match="mar_masks"):
        TrainOptions(out="x", mar_masks="cosine")
    model = fractalgen.build(tiny_config())
    assert LossModule(model).masks == ["train"] * len(model.levels)
    assert LossModule(model, "uniform").masks == ["uniform"] * len(model.levels)
    data = tiny_data(tmp_path / "d.npz")
    train(tiny_config(kinds=["mar", "mar"]), train_options(tmp_path / "u", data, steps=2, mar_masks="uniform"))
    assert read_checkpoint(tmp_path / "u" / "run")["options"]["mar_masks"] == "uniform"


def test_random_shift_moves_each_image_within_the_limit_and_fills_with_zero():
    from fractalgen.train import random_shift

    images = torch.randint(1, 256, (64, 1, 8, 8), dtype=torch.uint8)  # no zeros: the fill is visible
    out = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    seen = set()
    for x, y in zip(images, out, strict=True):
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.roll(x, (dy, dx), (1, 2))[:, max(dy, 0):8 + min(dy, 0),
                                                                max(dx, 0):8 + min(dx, 0)],
                                y[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)])]
        assert len(match) == 1, match
        dy, dx = match[0]
        seen.add((dy, dx))
        assert int((y == 0).sum()) == 8 * 8 - (8 - abs(dy)) * (8 - abs(dx))  # exactly the uncovered pixels
    assert len(seen) > 15  # all 25 shifts are drawn, not a fixed one
    assert torch.equal(out, random_shift(images, 2, torch.Generator().manual_seed(0)))


def test_resume_with_shift_continues_exactly(tmp_path):
    data = tiny_data(tmp_path / "d.npz")
    train(tiny_config(), train_options(tmp_path / "a", data, steps=4, shift=1))
    straight = read_checkpoint(tmp_path / "a" / "run")
    train(tiny_config(), train_options(tmp_path / "b", data, steps=2, shift=1))
    train(None, train_options(tmp_path / "b", data, steps=4, shift=1, resume=str(tmp_path / "b" / "run")))
    resumed = read_checkpoint(tmp_path / "b" / "run")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    train(tiny_config(), train_options(tmp_path / "c", data, steps=4))
    plain = read_checkpoint(tmp_path / "c" / "run")["model"]
    assert any(not torch.equal(plain[k], straight["model"][k]) for k in plain)  # the shift did something


def test_precision_option_sets_autocast_on_cpu_and_is_checked(tmp_path):
    """bf16 reaches the loss (a different first loss from the same seed and data, close to fp32's);
    auto on a CPU is fp32 (the very same loss); the choice is stored with the run."""
    with pytest.raises(UserError, match="precision"):
        TrainOptions(out="x", precision="fp16")
    data = tiny_data(tmp_path / "d.npz")
    first = {}
    for precision in ("fp32", "auto", "bf16"):
        out = train(tiny_config(), train_options(tmp_path / precision, data, steps=1, precision=precision))
        first[precision] = out["loss"]
        assert read_checkpoint(tmp_path / precision / "run")["options"]["precision"] == precision
    assert first["auto"] == first["fp32"]
    assert first["bf16"] != first["fp32"] and first["bf16"] == pytest.approx(first["fp32"], rel=0.02)


def test_runs_stored_before_the_precision_option_resume_with_auto(monkeypatch):
    """A run folder saved before `precision` existed has no such key: it resumes with auto (the old behaviour)."""
    import fractalgen.train as train_module

    stored = {"steps": 5, "mar_masks": "uniform", "out": "elsewhere"}
    monkeypatch.setattr(train_module, "read_checkpoint", lambda path: {"options": stored})
    resumed = train_module.run_options({"resume": "runs/old"})
    assert resumed.precision == "auto" and resumed.mar_masks == "uniform" and resumed.out == "runs/old"


class FirstStep(Exception):
    """Raised at a training run's first step by cuda_seed_at_first_step."""


def cuda_seed_at_first_step(monkeypatch, tmp_path, rank: int, world: int = 4) -> int:
    """The CUDA seed in effect when rank `rank` of a `world`-process run takes its first step.

    No GPU needed: torch.manual_seed seeds the CUDA generators through torch.cuda.manual_seed_all
    whether or not CUDA is present, so recording those calls shows what a GPU rank would draw from
    (MAR masks, label dropout, guiding-pixel jitter)."""
    import fractalgen.train as train_module
    from fractalgen.runtime import Dist

    seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeds.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", seeds.append)
    monkeypatch.setattr(train_module, "setup_distributed",
                        lambda device, **kwargs: (Dist(rank, world, rank), torch.device("cpu")))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, **kwargs: module)

    def first_step(*status):
        raise FirstStep(seeds[-1])

    monkeypatch.setattr(train_module, "reduce_status", first_step)
    data = tiny_data(tmp_path / f"d{rank}.npz")
    with pytest.raises(FirstStep) as caught:
        train(tiny_config(kinds=["mar", "mar"]), train_options(tmp_path / f"r{rank}", data, batch_size=world))
    return caught.value.args[0]


def test_every_rank_draws_from_its_own_cuda_stream(monkeypatch, tmp_path):
    """Identical initial weights on every rank must not leave every rank on the same CUDA stream."""
    seeds = {rank: cuda_seed_at_first_step(monkeypatch, tmp_path, rank) for rank in (1, 3)}
    assert seeds[1] != seeds[3], seeds


def test_data_loader_workers_default_to_none_on_a_cpu_and_several_on_a_gpu(monkeypatch):
    import fractalgen.runtime as runtime
    from fractalgen.runtime import loader_workers

    assert TrainOptions(out="x").num_workers is None  # auto unless asked
    with pytest.raises(UserError, match="num_workers"):
        TrainOptions(out="x", num_workers=-1)
    for cpus, on_gpu in ((2, 2), (64, runtime.LOADER_WORKERS_CUDA)):
        monkeypatch.setattr(runtime, "usable_cpus", lambda cpus=cpus: cpus)
        assert loader_workers(None, torch.device("cpu")) == 0
        assert loader_workers(None, torch.device("cuda", 1)) == on_gpu
        assert loader_workers(3, torch.device("cpu")) == loader_workers(3, torch.device("cuda")) == 3


def test_training_lowers_loss():
    torch.manual_seed(0)
    model = fractalgen.build(PRESETS["tiny_ar"].replace(label_drop_prob=0.0)).train()
    images = torch.randint(0, 4, (4, 3, 16, 16), dtype=torch.uint8) * 60
    labels = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("preset", ["tiny_ar", "tiny_mar"])
def test_ddp_searches_for_unused_parameters_only_where_some_sit_out(preset):
    """DDP's search for unused parameters costs a graph walk per step: it is on exactly when a step can
    leave a parameter without a gradient (probed here with one backward each way)."""
    from fractalgen.train import LossModule, some_parameters_sit_out

    model = fractalgen.build(preset)
    c = model.config
    images = torch.randint(0, 256, (4, c.channels, c.img_size, c.img_size), dtype=torch.uint8)
    for labels, drop in ((torch.tensor([0, 1, 2, 3]), c.label_drop_prob), (None, c.label_drop_prob),
                         (torch.tensor([0, 1, 2, 3]), 0.0)):
        probe = fractalgen.build(c.replace(label_drop_prob=drop))
        torch.manual_seed(0)
        LossModule(probe)(images, labels).backward()
        unused = [name for name, p in probe.named_parameters() if p.grad is None]
        assert some_parameters_sit_out(probe.config, labels is not None) == bool(unused), (labels, drop, unused)
