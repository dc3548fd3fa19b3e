"""Data-parallel training: torchrun on CPU (gloo) equals one process with the same global batch and seed.

The AR blocks' residual dropout and label dropout draw per-rank random numbers, which no
multi-process run can reproduce exactly; the equivalence runs switch both off
(tests/train_worker.py, label_drop_prob 0) so that the loss is a function of the batch alone.
They also train in float64: the two sides sum the batch in different orders, and in fp32 that
alone moves some weights by a sizeable part of an update on some CPUs' kernels.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
from frame import TRAIN_WORKER, tiny_config, tiny_data

from fractalgen import train as train_module
from fractalgen.data import EpochBatches
from fractalgen.errors import UserError
from fractalgen.model import FractalModel
from fractalgen.train import Dist, TrainOptions, read_checkpoint, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
STEPS, SAVE, LR = 6, 3, 3e-3
# Both sides in float64: another summation order changes a gradient by ~1e-16 of its terms' sizes, and
# AdamW's step is scale-free (at most ~LR a weight), so the runs may differ by 1e-16 of STEPS * LR times the
# sums' cancellation; RELATIVE allows 1e7 of cancellation, while a wrong update differs by a fraction of LR.
RELATIVE = 1e-9


def train_args(data, config, out, *extra):
    return ["train", "--config", str(config), "--data", str(data), "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "4", "--lr", str(LR), "--warmup-steps", "1", "--save-every", str(SAVE),
            "--keep-checkpoints", "--sample-every", "0", "--device", "cpu", "--threads", "1", "--seed", "1", *extra]


def torchrun(args, timeout=300, float64=True):
    env = {**os.environ, "FRACTALGEN_TEST_FLOAT64": "1" if float64 else "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*TORCHRUN, str(TRAIN_WORKER), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def single_options(data, out, **changes):
    """The same run in this process (what train_args asks for on the command line)."""
    base = {"out": str(out), "data": str(data), "steps": STEPS, "batch_size": 4, "lr": LR, "warmup_steps": 1,
                "save_every": SAVE, "keep_checkpoints": True, "sample_every": 0, "device": "cpu", "seed": 1}
    return TrainOptions(**{**base, **changes})


def train_here(config, options):
    """`train` in this process as the workers run it: float64 (the config has no dropout)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "FractalModel", lambda config: FractalModel(config).double())
        train(config, options)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Data, config, and the single-process reference run."""
    root = tmp_path_factory.mktemp("dist")
    data = tiny_data(root / "d.npz")
    config = tiny_config(label_drop_prob=0.0, ar_residual_dropout=0.0)  # the loss a function of the batch
    (root / "tiny.json").write_text(config.to_json())
    train_here(config, single_options(data, root / "single"))
    return root, data, root / "tiny.json", root / "single"


def assert_close(a: torch.Tensor, b: torch.Tensor, scale: float, what: str):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    worst = (a.double() - b.double()).abs().max().item()
    assert worst <= RELATIVE * scale, f"{what}: largest difference {worst:.3g}, {worst / scale:.3g} of {scale:.3g}"


def assert_same_training_state(a: dict, b: dict):
    assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for name, weights in a["model"].items():
        assert weights.dtype == torch.float64, name  # the comparison's premise
        assert_close(weights, b["model"][name], STEPS * LR, f"weights {name}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa.keys() & sb.keys():  # null_class: no state where it never had a gradient
        for key, value in sa[i].items():  # the moments, on the scale of their own largest entry
            assert_close(value, sb[i][key], value.abs().max().item(), f"optimizer state {i} {key}")


def test_torchrun_ddp_equals_one_process(single):
    root, data, config, reference = single
    run = root / "ddp"
    stdout = torchrun(train_args(data, config, run, "--sample-every", str(STEPS)))
    assert "over 2 process(es) (gloo, DDP)" in stdout
    assert stdout.count("trained to step 6") == 1  # rank 0 reports for everyone
    assert_same_training_state(read_checkpoint(reference), read_checkpoint(run))
    assert_same_training_state(read_checkpoint(reference / "checkpoint-0000003.pt"),
                               read_checkpoint(run / "checkpoint-0000003.pt"))
    state = read_checkpoint(run)
    assert len(state["rng"]) == 2 and state["world_size"] == 2  # every rank's random streams
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds
    # Files come from rank 0 alone: one of each, no temporary leftovers from a second writer.
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "checkpoint-0000003.pt", "checkpoint-0000006.pt", "checkpoint.pt", "metrics.jsonl",
        "model.safetensors", "samples"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [6]
    assert [p.name for p in (run / "samples").iterdir()] == ["step0000006.png"]


@pytest.mark.slow
def test_torchrun_fsdp_equals_one_process_and_checkpoints_cross_over(single):
    root, data, config, reference = single
    run = root / "fsdp"
    stdout = torchrun(train_args(data, config, run, "--fsdp"))
    assert "(gloo, FSDP)" in stdout
    assert_same_training_state(read_checkpoint(reference), read_checkpoint(run))

    # FSDP checkpoint (step 3) -> one process, and one-process checkpoint (step 3) -> FSDP.
    to_single, to_fsdp = root / "fsdp-to-single", root / "single-to-fsdp"
    for source, target in ((run, to_single), (reference, to_fsdp)):
        target.mkdir()
        shutil.copy(source / "checkpoint-0000003.pt", target / "checkpoint.pt")
    train_here(None, single_options(data, to_single, resume=str(to_single)))
    torchrun(["train", "--resume", str(to_fsdp), "--fsdp", "--threads", "1"])
    for target in (to_single, to_fsdp):
        assert_same_training_state(read_checkpoint(reference), read_checkpoint(target))


@pytest.mark.slow
def test_torchrun_fsdp_trains_under_bf16(single):
    """Two gloo ranks gather the blocks in bf16 and reduce in fp32 (what one rank cannot show): the run
    finishes, and the checkpoint holds fp32 weights and optimizer state, finite."""
    root, data, config, _ = single
    run = root / "fsdp-bf16"
    stdout = torchrun(train_args(data, config, run, "--fsdp", "--precision", "bf16"), float64=False)
    assert "(gloo, FSDP)" in stdout and "bf16 autocast" in stdout
    state = read_checkpoint(run)
    assert state["step"] == STEPS
    for name, weights in state["model"].items():
        assert weights.dtype == torch.float32 and torch.isfinite(weights).all(), name
    for values in state["optimizer"]["state"].values():
        for key, value in values.items():
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key


def test_global_batch_must_divide_over_ranks(tmp_path, monkeypatch):
    data = tiny_data(tmp_path / "d.npz")
    monkeypatch.setattr(train_module, "setup_distributed", lambda device, **kwargs: (Dist(0, 2), torch.device("cpu")))
    with pytest.raises(UserError, match="global batch 5 is not divisible by 2 processes"):
        train(tiny_config(), single_options(data, tmp_path / "run", batch_size=5))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_process_group_waits_two_hours_for_a_rank(tmp_path, monkeypatch):
    """Rank 0's preview samples and checkpoints outlast the backends' default wait in a collective:
    train joins torchrun's group with a two-hour timeout."""
    data = tiny_data(tmp_path / "d.npz")
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    joined = {}

    class Joined(Exception):
        pass

    def init_process_group(backend, **kwargs):
        joined.update(backend=backend, **kwargs)
        raise Joined

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    with pytest.raises(Joined):
        train(tiny_config(), single_options(data, tmp_path / "run"))
    assert joined == {"backend": "gloo", "timeout": timedelta(hours=2)}
    assert not (tmp_path / "run").exists()


def test_barrier_is_a_no_op_without_a_process_group():
    assert not torch.distributed.is_initialized()
    Dist().barrier()
    Dist(0, 2).barrier()


def test_ranks_split_each_global_batch_and_epochs_reshuffle():
    size, batch, world = 24, 8, 4
    single = EpochBatches(size, batch, rank=0, world=1, seed=5, flip=True)
    ranks = [EpochBatches(size, batch, rank=r, world=world, seed=5, flip=True) for r in range(world)]
    per_epoch = size // batch
    steps = [b for _, b in zip(range(3 * per_epoch), single, strict=False)]
    split = [list(b) for _, b in zip(range(len(steps)), zip(*(iter(r) for r in ranks), strict=False), strict=False)]
    for step, parts in zip(steps, split, strict=True):
        assert all(len(p) == batch // world for p in parts)
        assert [item for part in parts for item in part] == step  # the ranks' slices, in order: one-process batch
    epochs = [sorted(i for b in steps[e * per_epoch:(e + 1) * per_epoch] for i, _ in b) for e in range(3)]
    assert all(e == list(range(size)) for e in epochs)  # each epoch visits every image once
    orders = [[i for b in steps[e * per_epoch:(e + 1) * per_epoch] for i, _ in b] for e in range(3)]
    assert orders[0] != orders[1] != orders[2]  # and in a new order
    other_seed = EpochBatches(size, batch, rank=0, world=1, seed=6, flip=True)
    assert next(iter(other_seed)) != steps[0]


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_and_resumes(single):
    """torchrun passes SIGTERM to its workers: they agree on a step, rank 0 writes it, and --resume finishes."""
    root, data, config, _ = single
    run = root / "terminated"
    env = {**os.environ, "FRACTALGEN_TEST_STEP_DELAY": "0.3", "OMP_NUM_THREADS": "1"}
    args = [*train_args(data, config, run), "--steps", "40", "--save-every", "5"]
    proc = subprocess.Popen([*TORCHRUN, str(TRAIN_WORKER), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = read_checkpoint(run)["step"]
    assert f"fractalgen train: SIGTERM: stopped at step {stopped}, checkpoint written" in err
    assert 5 <= stopped < 40 and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    torchrun(["train", "--resume", str(run), "--threads", "1"])
    assert read_checkpoint(run)["step"] == 40



@pytest.fixture
def one_rank_group(tmp_path):
    """A real gloo process group of one rank in this process (FSDP needs one), taken down afterwards."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def sharded_step(precision: str, monkeypatch) -> dict:
    """Shard a model with MAR levels and pixel-head blocks as training does, and take one forward and
    backward at `precision`: the dtypes the blocks' and the root's weights have inside the forward, the
    gradients' dtypes, and the policies fully_shard was given."""
    from torch.distributed import fsdp

    from fractalgen.nn import precision_context

    policies, fully_shard = [], fsdp.fully_shard

    def recording(module, **kwargs):
        policies.append((type(module).__name__, kwargs.get("mp_policy")))
        return fully_shard(module, **kwargs)

    monkeypatch.setattr(fsdp, "fully_shard", recording)
    torch.manual_seed(0)
    model = FractalModel(tiny_config(kinds=["mar", "mar"]))
    loss_module = train_module.shard(train_module.LossModule(model), precision)
    seen = {"blocks": set(), "root": set()}
    # Hooks registered after FSDP's own: they run once the unit's weights are gathered.
    for module in model.modules():
        for block in getattr(module, "blocks", []):
            block.register_forward_pre_hook(lambda m, args: seen["blocks"].update(p.dtype for p in m.parameters()))
    root = [p for name, p in model.named_parameters() if ".blocks." not in name]
    loss_module.register_forward_pre_hook(lambda m, args: seen["root"].update(p.dtype for p in root))
    with precision_context(precision, "cpu"):
        loss = loss_module(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1]))
    loss.backward()
    seen["gradients"] = {p.grad.dtype for p in model.parameters() if p.grad is not None}
    seen["policies"] = policies
    return seen


@pytest.mark.usefixtures("one_rank_group")
def test_fsdp_under_bf16_gathers_the_blocks_in_bf16_and_reduces_in_fp32(monkeypatch):
    """A real fully_shard on one gloo rank: the policy reaches the blocks (their weights are bf16 inside
    the forward), the root stays fp32 (the pixel heads' tables feed fp32 islands), gradients land in the
    fp32 shards. The reduction's dtype cannot show on one rank, so the policies given are checked too."""
    seen = sharded_step("bf16", monkeypatch)
    assert seen["blocks"] == {torch.bfloat16} and seen["root"] == {torch.float32}
    assert seen["gradients"] == {torch.float32}
    *blocks, (root_name, root_policy) = seen["policies"]
    assert root_name == "LossModule" and root_policy is None  # fully_shard's default: no casting
    model = FractalModel(tiny_config(kinds=["mar", "mar"]))
    assert len(blocks) == sum(len(getattr(m, "blocks", [])) for m in model.modules()) > 2  # the levels' and the heads'
    for _, policy in blocks:
        assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
        assert not policy.cast_forward_inputs  # the residual stream and the images as autocast leaves them


@pytest.mark.usefixtures("one_rank_group")
def test_fsdp_under_fp32_casts_nothing(monkeypatch):
    seen = sharded_step("fp32", monkeypatch)
    assert seen["blocks"] == seen["root"] == seen["gradients"] == {torch.float32}
    assert all(policy is None or policy.param_dtype is None and policy.reduce_dtype is None
               for _, policy in seen["policies"])


def test_training_hands_its_precision_to_fsdp(tmp_path, monkeypatch):
    """train resolves the precision before sharding and passes it on (auto is fp32 on a CPU)."""
    data = tiny_data(tmp_path / "d.npz")
    monkeypatch.setattr(train_module, "setup_distributed", lambda device, **kwargs: (Dist(0, 2), torch.device("cpu")))

    class Sharded(Exception):
        pass

    def shard(loss_module, precision):
        raise Sharded(precision)

    monkeypatch.setattr(train_module, "shard", shard)
    for asked, given in (("bf16", "bf16"), ("fp32", "fp32"), ("auto", "fp32")):
        with pytest.raises(Sharded) as caught:
            train(tiny_config(), single_options(data, tmp_path / asked, fsdp=True, precision=asked))
        assert caught.value.args == (given,)
