"""Hostile run folders, model folders and logs: each ends in correct work or one clear line, bounded.

What a run folder holds (checkpoint.pt's stored options and config, metrics.jsonl) and what a model
folder holds (config.json) is read back through the same checks as a flag. Every command line runs
in one child process with a time and an address-space limit (tests/bounded.py).
"""
import dataclasses
import json
import os
import shutil

import pytest
import torch
from bounded import assert_one_line_error, run_cases
from frame import TINY, tiny_data, train_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fractalgen
from fractalgen.cli.train import flag_type
from fractalgen.errors import UserError
from fractalgen.train import OPTION_BOUNDS, OPTION_KINDS, OPTIONAL, TrainOptions, run_options

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json's recursive parser, unless bounded first
HUGE = {**TINY, "widths": [2**20, 2**19, 2**18], "heads": [2, 2, 2]}  # some 19 trillion parameters


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run (2 steps) and a tiny model folder."""
    root = tmp_path_factory.mktemp("runs")
    fractalgen.save_pretrained(fractalgen.load(train_tiny(root)), root / "folder")
    return root


def copy_run(trained, folder, change_state=None, metrics=None):
    """A copy of the tiny run whose checkpoint.pt went through `change_state(state)` (in place)."""
    shutil.copytree(trained / "run", folder)
    if change_state is not None:
        state = torch.load(folder / "checkpoint.pt", weights_only=True)
        change_state(state)
        torch.save(state, folder / "checkpoint.pt")
    if metrics is not None:
        (folder / "metrics.jsonl").write_text(metrics)
    return folder


def stored_options(**changes):
    def change(state):
        state["options"] = json.dumps({**json.loads(state["options"]), **changes})
    return change


def stored(key, text):
    def change(state):
        state[key] = text
    return change


def resume(folder, *flags):
    return ["train", "--resume", folder, "--steps", "3", "--device", "cpu", *flags]


@pytest.fixture(scope="module")
def outcomes(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_runs")
    line = '{"step": 1, "loss": 1.0, "wall_s": 2.0}\n'
    cases = {
        # class 2: stored options pass the flags' bounds
        "shift": resume(copy_run(trained, root / "shift", stored_options(shift=10**9))),
        "batch": resume(copy_run(trained, root / "batch", stored_options(batch_size=10**12))),
        "flip": resume(copy_run(trained, root / "flip", stored_options(flip="no"))),
        "device": resume(copy_run(trained, root / "device", stored_options(device="meta")))[:-2],
        # class 22 and 4: options and config that are not JSON objects, or nest too deeply
        "options_list": resume(copy_run(trained, root / "options_list", stored("options", "[1, 2]"))),
        "options_deep": resume(copy_run(trained, root / "options_deep", stored("options", DEEP))),
        "config_deep": resume(copy_run(trained, root / "config_deep", stored("config", DEEP))),
        "options_nan": resume(copy_run(trained, root / "options_nan", stored("options", '{"lr": NaN}'))),
        # class 4 and 9: damaged metrics.jsonl lines
        "metrics_deep": resume(copy_run(trained, root / "metrics_deep", metrics=line + DEEP + "\n" + line)),
        "metrics_digits": resume(copy_run(trained, root / "metrics_digits",
                                          metrics='{"step": ' + "9" * 5000 + '}\n' + line)),
        "metrics_wall": resume(copy_run(trained, root / "metrics_wall",
                                        metrics='{"step": 2, "wall_s": "yesterday"}\n')),
        "plot_deep": ["plot", copy_run(trained, root / "plot_deep", metrics=line + DEEP + "\n" + line)],
        "plot_wall": ["plot", root / "metrics_wall", "--metric", "wall_s"],
    }
    # class 4: a model folder's config.json, and an export card
    shutil.copytree(trained / "folder", root / "folder_deep")
    (root / "folder_deep" / "config.json").write_text(DEEP)
    cases["folder_deep"] = ["sample", "--checkpoint", root / "folder_deep", "--n", "1", "--out", root / "s",
                            "--device", "cpu"]
    (root / "card.json").write_text('{"dataset": ' + DEEP + "}")
    cases["card_deep"] = ["export", "--checkpoint", trained / "run", "--out", root / "exported",
                          "--card", root / "card.json"]
    # class 21: a FIFO where metrics.jsonl belongs (reading it would block until a writer comes)
    fifo = copy_run(trained, root / "fifo")
    os.remove(fifo / "metrics.jsonl")
    os.mkfifo(fifo / "metrics.jsonl")
    cases["fifo_resume"] = resume(fifo)
    cases["fifo_plot"] = ["plot", fifo]
    (root / "config_fifo.json").unlink(missing_ok=True)
    os.mkfifo(root / "config_fifo.json")
    cases["fifo_config"] = ["train", "--config", root / "config_fifo.json", "--out", root / "never", "--device", "cpu"]
    # a model this machine cannot hold: from a config file, a preset, a resumed run's stored config or a
    # model folder whose config.json is forged (its weights stay small)
    (root / "huge.json").write_text(json.dumps(HUGE))
    data = tiny_data(root / "d.npz")
    cases["config_huge"] = ["train", "--config", root / "huge.json", "--data", data, "--out", root / "huge_run",
                            "--device", "cpu"]
    cases["preset_huge"] = ["train", "--preset", "fractalmar_huge_in256", "--data", data, "--out",
                            root / "preset_run", "--device", "cpu"]
    cases["resume_huge"] = resume(copy_run(trained, root / "resume_huge", stored("config", json.dumps(HUGE))))
    folder_config = json.loads((trained / "folder" / "config.json").read_text())
    for case, change in {"folder_wide": {"embed_dim_list": HUGE["widths"]},
                         "folder_blocks": {"num_blocks_list": [2**20, 1, 1]}}.items():
        shutil.copytree(trained / "folder", root / case)
        (root / case / "config.json").write_text(json.dumps({**folder_config, **change}))
        cases[case] = ["sample", "--checkpoint", root / case, "--n", "1", "--out", root / f"{case}_out",
                       "--device", "cpu"]
    return run_cases(cases, seconds=240, memory_gib=1.5), root


@pytest.mark.parametrize("case, command, words", [
    ("shift", "train", ["shift", "<= 64"]),
    ("batch", "train", ["batch_size", "<="]),
    ("flip", "train", ["flip", "true or false"]),
    ("device", "train", ["device"]),
    ("options_list", "train", ["stored options", "a JSON object"]),
    ("options_deep", "train", ["stored options", "nested too deeply"]),
    ("config_deep", "train", ["stored config", "nested too deeply"]),
    ("options_nan", "train", ["NaN"]),
    ("plot_deep", "plot", ["metrics.jsonl:2", "nested too deeply"]),
    ("plot_wall", "plot", ["wall_s", "must be a number"]),
    ("folder_deep", "sample", ["config.json", "nested too deeply"]),
    ("card_deep", "export", ["--card", "nested too deeply"]),
    ("fifo_resume", "train", ["metrics.jsonl", "not a regular file"]),
    ("fifo_plot", "plot", ["metrics.jsonl", "not a regular file"]),
    ("fifo_config", "train", ["config_fifo.json", "not a regular file"]),
    ("config_huge", "train", ["'tiny_gray' (19.", "T parameters) needs", "GiB to train", "more than the"]),
    ("preset_huge", "train", ["'fractalmar_huge_in256' (848M parameters) needs", "GiB to train", "more than the"]),
    ("resume_huge", "train", ["T parameters) needs", "GiB to train"]),
    ("folder_wide", "sample", ["model.safetensors", "T parameters) needs", "GiB for its fp32 weights"]),
    ("folder_blocks", "sample", ["model.safetensors", "weight tensors", "the file holds"]),
])
def test_hostile_run_and_model_folders_are_one_line(outcomes, case, command, words):
    results, _ = outcomes
    assert_one_line_error(results[case], command, *words)


def test_a_model_too_large_to_hold_leaves_nothing_behind(outcomes, trained):
    """Refused before the run folder is made (or, resumed, touched) and before a sample is drawn."""
    _, root = outcomes
    assert not (root / "huge_run").exists() and not (root / "preset_run").exists()
    assert not (root / "folder_wide_out").exists() and not (root / "folder_blocks_out").exists()
    assert torch.load(root / "resume_huge" / "checkpoint.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("case, words", [("metrics_deep", ["metrics.jsonl:2", "nested too deeply"]),
                                         ("metrics_digits", ["metrics.jsonl:1", "out of range"]),
                                         ("metrics_wall", ["metrics.jsonl:1", "wall_s"])])
def test_a_damaged_log_does_not_block_resume(outcomes, case, words):
    """The log is a record, not the run's state: the resume trains on, says why wall time restarts."""
    (code, _, err), root = outcomes[0][case], outcomes[1]
    assert code == 0 and "Traceback" not in err, err
    note = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and all(w in note[0] for w in words), err
    assert torch.load(root / case / "checkpoint.pt", weights_only=True)["step"] == 3


def test_refused_resumes_leave_the_run_as_it_was(outcomes, trained):
    _, root = outcomes
    before = (trained / "run" / "checkpoint.pt").read_bytes()
    for case in ("shift", "options_list", "config_deep"):
        state = torch.load(root / case / "checkpoint.pt", weights_only=True)
        assert state["step"] == 2 and (root / case / "model.safetensors").is_file()
    assert before == (trained / "run" / "checkpoint.pt").read_bytes()


def test_stored_num_workers_is_bounded_like_the_flag(trained, tmp_path):
    """The stored value that started some 870 processes: refused before any process starts."""
    folder = copy_run(trained, tmp_path / "workers", stored_options(num_workers=10**6))
    with pytest.raises(UserError, match="num_workers must be <= 256"):
        run_options({"resume": str(folder)})
    assert run_options({"resume": str(trained / "run")}).num_workers is None  # the run as stored is fine


@pytest.mark.parametrize("setting", [{"cfg": 3e38}, {"cfg": -1e300}, {"temperature": 1e39}])
def test_huge_finite_sampling_settings_are_refused_everywhere(trained, tmp_path, setting):
    """One bound, in settings.check and the folder/metadata reader: the sampler never sees them."""
    model = fractalgen.load(trained / "run")
    with pytest.raises(ValueError, match="at most"):
        fractalgen.sample(model, n=1, num_iter=(1,) * model.config.num_levels, **setting)
    with pytest.raises(ValueError, match="at most"):
        fractalgen.save_pretrained(model, tmp_path / "written", sampling=setting)
    assert not (tmp_path / "written").exists()
    shutil.copytree(trained / "folder", tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    config["sampling"].update(setting)
    (tmp_path / "folder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="<= 10000|between"):
        fractalgen.load(tmp_path / "folder")


# ---- fuzzed stored options: the flags' checks, or one line --------------------------------------------

OPTION_NAMES = sorted({f.name for f in dataclasses.fields(TrainOptions)} | {"unknown"})
OPTION_VALUES = (st.none() | st.booleans() | st.integers(-2, 300) | st.integers(-2**70, 2**70) | st.floats()
                 | st.text(max_size=6) | st.lists(st.integers(0, 3), max_size=2)
                 | st.dictionaries(st.text(max_size=3), st.integers(), max_size=1)
                 | st.sampled_from(["cpu", "cuda:0", "meta", "mps:x", "official", "uniform", "bf16", "fp32", "auto",
                                    10**12, 10**12 + 1, 2**31, 0.5, 1e-300]))  # near the bounds and the choices


@pytest.fixture(scope="module")
def stored_state(trained):
    return torch.load(trained / "run" / "checkpoint.pt", weights_only=True)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.dictionaries(st.sampled_from(OPTION_NAMES), OPTION_VALUES, max_size=4)
       | st.lists(st.integers(), max_size=2) | st.text(max_size=4))
def test_fuzzed_stored_options_pass_the_flags_checks_or_are_one_line(stored_state, tmp_path_factory, stored):
    """A resumed run's stored options go through TrainOptions' one validator: what it accepts is what the
    flags accept (each value parses back through its flag's own type), the rest is one line."""
    folder = tmp_path_factory.mktemp("options")
    torch.save({**stored_state, "options": json.dumps(stored)}, folder / "checkpoint.pt")
    try:
        options = run_options({"resume": str(folder)})
    except UserError as e:
        assert str(e) and "\n" not in str(e), str(e)
        return
    for name, bound in OPTION_BOUNDS.items():
        value = getattr(options, name)
        if value is None:
            assert name in OPTIONAL
        elif bound.choices:
            assert value in bound.choices
        else:
            assert flag_type(bound)(repr(value)) == value, (name, value)
    for name, kind in OPTION_KINDS.items():
        value = getattr(options, name)
        assert (value is None and name in OPTIONAL) or type(value) is kind, (name, value)
