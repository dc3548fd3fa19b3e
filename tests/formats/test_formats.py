"""The formats package: each format's reader and writer live in one module, found in one place; the
public names stay where they were; the old module paths still import, with a DeprecationWarning."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fractalgen
from fractalgen import formats
from fractalgen.formats import card, folder, official, ours, run

SOURCE = Path(fractalgen.__file__).parent
# format module -> (its reader, its writer)
FORMATS = {
    official: ("load_official", "save_official"),
    ours: ("load_ours", "save_ours"),
    folder: ("load_folder", "save_pretrained"),
    run: ("read_checkpoint", "write_checkpoint"),
    card: ("facts_from_dict", "model_card"),  # the card's facts in, the README.md out
}
OLD_MODULES = {
    "fractalgen.checkpoint": [
        "CheckpointError", "load", "save", "save_official", "load_official", "load_ours", "load_folder",
        "official_key", "official_state_dict", "safe_torch_load", "check_tensors", "check_sampling",
        "stored_tensors", "read_config", "parse_hub_id", "download", "model_folder", "resolve", "BUNDLED",
        "DEFAULT_INPAINT_CHECKPOINT", "FOLDER_FILES"],
    "fractalgen.hub": ["save_pretrained", "export", "folder_config", "sampling_recommendation", "OUR_FIELDS"],
    "fractalgen.card": ["CardFacts", "Measurement", "model_card", "facts_from_dict", "yaml_lines"],
}


@pytest.mark.parametrize("module", FORMATS, ids=lambda m: m.__name__)
def test_each_format_has_its_reader_and_writer_in_one_module(module):
    for name in FORMATS[module]:
        function = getattr(module, name)
        assert callable(function) and function.__module__ == module.__name__, name
        defined = [p for p in SOURCE.rglob("*.py") if re.search(rf"^def {name}\(", p.read_text(), re.M)]
        assert defined == [Path(module.__file__)], (name, defined)  # grep finds one place


def test_the_public_names_stay_where_they_were():
    assert fractalgen.load is formats.load and fractalgen.save is ours.save_ours
    assert fractalgen.save_official is official.save_official
    assert fractalgen.save_pretrained is folder.save_pretrained
    assert fractalgen.export is formats.export
    assert fractalgen.CardFacts is card.CardFacts and fractalgen.Measurement is card.Measurement
    assert fractalgen.CheckpointError is formats.CheckpointError


@pytest.mark.parametrize("old", OLD_MODULES)
def test_old_module_paths_warn_and_still_work(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # a module warns when first imported
    with pytest.warns(DeprecationWarning, match=re.escape(old)):
        module = importlib.import_module(old)
    for name in OLD_MODULES[old]:
        assert hasattr(module, name), f"{old}.{name}"
    assert getattr(module, "CardFacts", fractalgen.CardFacts) is fractalgen.CardFacts


def test_old_model_folder_still_leaves_bundled_names_alone(tmp_path, monkeypatch):
    """checkpoint.model_folder kept its rule: a bundled name is never a folder, even one beside it."""
    fractalgen.save_pretrained(fractalgen.build({"img_sizes": [4, 1], "widths": [8, 8], "blocks": [1, 1],
                                                 "heads": [1, 1], "kinds": ["ar"], "channels": 1,
                                                 "pixel_mean": [0.5], "pixel_std": [0.5]}),
                               tmp_path / "mnist")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "fractalgen.checkpoint", raising=False)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("fractalgen.checkpoint")
    assert old.model_folder("mnist") is None and folder.model_folder("mnist") == Path("mnist")
    assert fractalgen.load("mnist").config.name == fractalgen.load(formats.BUNDLED["mnist"]).config.name


def test_importing_the_package_imports_no_deprecated_module():
    code = ("import sys, warnings\nimport torch, numpy, PIL, safetensors\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import fractalgen, fractalgen.cli, fractalgen.train\n"
            "old = {'fractalgen.checkpoint', 'fractalgen.hub', 'fractalgen.card'} & set(sys.modules)\n"
            "mine = [str(w.message) for w in caught if 'fractalgen.' in str(w.message)]\n"
            "assert not old and not mine, (old, mine)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_run_checkpoint_reads_back_what_was_written(tmp_path):
    config = fractalgen.get_config("mnist_ar")
    optimizer = {"state": {}, "param_groups": []}
    run.write_checkpoint(tmp_path, model={"w": torch.arange(3.0)}, optimizer=optimizer, step=6, per_epoch=4,
                         rng=[{"torch": torch.get_rng_state()}], config=config, options={"lr": 0.5},
                         world_size=1, keep=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000006.pt", "checkpoint.pt"]
    state = run.read_checkpoint(tmp_path)
    assert state["step"] == state["data_position"] == 6 and state["epoch"] == 1.5 and state["world_size"] == 1
    assert state["options"] == {"lr": 0.5} and fractalgen.get_config(state["config"]) == config
    assert torch.equal(state["model"]["w"], torch.arange(3.0))
