"""Model folders (config.json + model.safetensors + README.md) by path and by hub id from a local cache."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from frame import TINY, run_cli, tiny_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import fractalgen
from fractalgen import CardFacts, CheckpointError, Measurement
from fractalgen.errors import UserError
from fractalgen.formats.folder import parse_hub_id
from fractalgen.formats.official import official_state_dict

# A MAR level above an AR one, three classes and (recommending_model) a recommendation of its own.
FOLDER_TINY = {**TINY, "kinds": ["mar", "ar"], "num_classes": 3, "num_conds": 5}
CARD = {"dataset": "mnist", "dataset_name": "MNIST", "split": "test", "bits_per_dim": 1.234,
        "bits_per_dim_command": "fractalgen nll --checkpoint X --split val", "sample_accuracy": 0.875,
        "sample_accuracy_command": "fractalgen eval-samples --checkpoint X --per-class 100",
        "measurements": [{"name": "classifier FID", "value": 21.5, "command": "fractalgen evaluate ...",
                          "metric": "fid"}]}


def recommending_model():
    """FOLDER_TINY with weights moved off their initial values (so that a mix-up would show) and a recommendation."""
    model = tiny_model(FOLDER_TINY, perturb=0.05)
    model.recommended = {"num_iter": [2, 4], "cfg": 2.5, "temperature": 0.9}
    return model


def draw(model, seed=3):
    """Samples with the model's recommended settings (what fractalgen.sample uses when none are given)."""
    return fractalgen.sample(model, labels=[0, 1, 2, 0], seed=seed)


def front_matter(text: str) -> dict:
    yaml = pytest.importorskip("yaml")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_folder_round_trip_same_weights_settings_and_samples(tmp_path):
    model = recommending_model()
    folder = fractalgen.save_pretrained(model, tmp_path / "tiny", card=CARD)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    config = json.loads((folder / "config.json").read_text())
    # The official constructor's names, ours beside them, the recommendation under its own key.
    assert config["img_size_list"] == [8, 2, 1] and config["embed_dim_list"] == [16, 8, 8]
    assert config["generator_type_list"] == ["mar", "ar", "ar"] and config["class_num"] == 3
    assert config["channels"] == 1 and config["pixel_mean"] == [0.5]
    assert config["sampling"] == {"cfg": 2.5, "cfg_schedule": "linear", "temperature": 0.9,
                                  "filter_threshold": 1e-4, "num_iter": [2, 4]}
    assert "img_sizes" not in config and "widths" not in config
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the authors' parameter names
        assert set(f.keys()) == set(official_state_dict(model)) and f.metadata() == {"format": "pt"}

    loaded = fractalgen.load(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert fractalgen.load(folder / "model.safetensors").recommended == loaded.recommended  # its weights file
    assert loaded.recommended["cfg"] == 2.5 and loaded.recommended["temperature"] == 0.9
    assert loaded.config == model.config
    assert torch.equal(draw(loaded), draw(model))
    assert not torch.equal(draw(loaded, seed=4), draw(model))  # the comparison can fail


def test_model_card_front_matter_and_numbers(tmp_path):
    folder = fractalgen.save_pretrained(recommending_model(), tmp_path / "tiny", card=CARD)
    text = (folder / "README.md").read_text()
    meta = front_matter(text)
    assert meta["license"] == "mit" and meta["library_name"] == "fractalgen"
    assert meta["datasets"] == ["mnist"] and set(meta["metrics"]) == {"bits_per_dim", "accuracy", "fid"}
    assert "fractalgen" in meta["tags"] and "masked-autoregressive" in meta["tags"]
    results = meta["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"bits_per_dim": 1.234, "accuracy": 0.875,
                                                                    "fid": 21.5}
    for needle in ("1.234", "87.5%", "fractalgen nll --checkpoint X --split val", "| cfg | 2.5 |",
                   "| num_iter | 2,4 |", "## Intended use", "## Limitations", "arXiv:2502.17437",
                   "author  = {Li, Tianhong and Sun, Qinyi and Fan, Lijie and He, Kaiming}"):
        assert needle in text, needle


def test_model_card_parses_with_huggingface_hub(tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    folder = fractalgen.save_pretrained(recommending_model(), tmp_path / "tiny", card=CARD)
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "fractalgen"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "bits_per_dim": 1.234, "accuracy": 0.875, "fid": 21.5}


def test_card_without_numbers_says_so_and_numbers_need_their_command(tmp_path):
    folder = fractalgen.save_pretrained(recommending_model(), tmp_path / "plain")
    text = (folder / "README.md").read_text()
    assert "No measurements were supplied" in text and "model-index" not in front_matter(text)
    with pytest.raises(UserError, match="give the command"):
        fractalgen.save_pretrained(recommending_model(), tmp_path / "x", card=CardFacts(bits_per_dim=1.0))
    with pytest.raises(UserError, match="fraction"):
        fractalgen.save_pretrained(recommending_model(), tmp_path / "y", card={"sample_accuracy": 87.5,
                                                                       "sample_accuracy_command": "c"})
    with pytest.raises(UserError, match="unknown model card field"):
        fractalgen.save_pretrained(recommending_model(), tmp_path / "z", card={"bpd": 1.0})
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()  # refused before writing
    assert Measurement("m", 1.0, "c").percent is False


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    with pytest.raises(UserError, match="already holds README.md"):
        fractalgen.save_pretrained(recommending_model(), folder)
    assert (folder / "README.md").read_text() == "my notes" and not (folder / "config.json").exists()
    fractalgen.save_pretrained(recommending_model(), folder, overwrite=True)
    assert (folder / "README.md").read_text().startswith("---\n")


def test_bf16_folder_loads_as_fp32_rounded_weights(tmp_path):
    model = recommending_model()
    folder = fractalgen.save_pretrained(model, tmp_path / "half", dtype=torch.bfloat16)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    loaded = fractalgen.load(folder)
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == torch.float32 and torch.equal(got, value.to(torch.bfloat16).float()), key
    assert "(bfloat16)" in (folder / "README.md").read_text()


def test_export_from_training_files_official_pth_and_bundled(tmp_path):
    model = recommending_model()
    fractalgen.save(model, tmp_path / "ours.safetensors", sampling={"cfg": 2.5, "temperature": 0.9})
    fractalgen.save_official(model, tmp_path / "official.pth")
    a = fractalgen.export(tmp_path / "ours.safetensors", tmp_path / "from_ours")
    b = fractalgen.export(tmp_path / "official.pth", tmp_path / "from_official", config=model.config)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "config.json").read_text())["sampling"]["cfg"] == 2.5
    assert torch.equal(draw(fractalgen.load(a)), draw(model))

    bundled = fractalgen.export("mnist", tmp_path / "mnist", card={"dataset": "mnist"})
    original, exported = fractalgen.load("mnist"), fractalgen.load(bundled)
    assert json.loads((bundled / "config.json").read_text())["sampling"]["cfg"] == original.recommended["cfg"]
    assert torch.equal(fractalgen.sample(original, labels=[3], cfg=4.0, seed=0),
                       fractalgen.sample(exported, labels=[3], cfg=4.0, seed=0))
    with pytest.raises(CheckpointError, match="say which model"):
        fractalgen.export(tmp_path / "official.pth", tmp_path / "unknown")


def test_config_json_in_the_official_constructors_form(tmp_path):
    """A config.json written from the authors' FractalGen(**kwargs) (as a PyTorchModelHubMixin would)."""
    model = recommending_model()
    folder = fractalgen.save_pretrained(model, tmp_path / "tiny")
    config = json.loads((folder / "config.json").read_text())
    for ours in ("sampling", "name"):
        del config[ours]
    config.update(grad_checkpointing=False, fractal_level=0)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = fractalgen.load(folder)
    assert loaded.config.widths == model.config.widths and loaded.recommended == {}
    config["fractal_level"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="fractal_level"):
        fractalgen.load(folder)
    config.update(fractal_level=0, sampling={"temperature": -1.0})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'sampling' field 'temperature' must be a number > 0"):
        fractalgen.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        fractalgen.load(folder)


def test_hub_ids_are_told_apart_from_paths():
    assert parse_hub_id("owner/name") == ("owner/name", None)
    assert parse_hub_id("owner/name@v1.0") == ("owner/name", "v1.0")
    for path in ("model.pth", "runs/x/model.safetensors", "./owner/name", "/abs/path", "a/b/c", "name"):
        assert parse_hub_id(path) is None, path


def make_hub_cache(home, repo_id, folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub keeps: hub/models--owner--name/{refs/main, snapshots/<revision>/...}."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


HUB_CHILD = """
import sys, torch, fractalgen
torch.set_num_threads(1)
model = fractalgen.load(sys.argv[1])
torch.save(fractalgen.sample(model, labels=[0, 1, 2, 0], seed=3), sys.argv[2])
"""


def test_hub_id_loads_from_the_local_cache_offline(tmp_path):
    pytest.importorskip("huggingface_hub")
    model = recommending_model()
    folder = fractalgen.save_pretrained(model, tmp_path / "tiny", card=CARD)
    home = tmp_path / "hf_home"
    make_hub_cache(home, "someone/tiny-fractal", folder)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)

    def child(name, out):
        return subprocess.run([sys.executable, "-c", HUB_CHILD, name, str(out)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, check=False)

    proc = child("someone/tiny-fractal", tmp_path / "hub.pt")
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "hub.pt"), draw(fractalgen.load(folder)))
    assert torch.equal(torch.load(tmp_path / "hub.pt"), draw(model))

    proc = child("someone/not-cached", tmp_path / "missing.pt")  # offline and not in the cache: one clear error
    assert proc.returncode != 0 and "CheckpointError" in proc.stderr and "someone/not-cached" in proc.stderr


def test_hub_id_without_huggingface_hub_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(CheckpointError, match=r'pip install "fractalgen-pytorch\[hub\]"'):
        fractalgen.load("someone/tiny-fractal")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        fractalgen.load("missing.pth")  # a file name is never taken for a hub id


def test_export_command_writes_a_folder_the_other_commands_read(tmp_path):
    model = recommending_model()
    fractalgen.save(model, tmp_path / "ours.safetensors")
    (tmp_path / "card.json").write_text(json.dumps({**CARD, "repo_id": "someone/tiny"}))
    code, out, err = run_cli("export", "--checkpoint", tmp_path / "ours.safetensors", "--out",
                             tmp_path / "folder", "--dtype", "bfloat16", "--card", tmp_path / "card.json", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["out"] == str(tmp_path / "folder")
    card = (tmp_path / "folder" / "README.md").read_text()
    assert 'fractalgen.load("someone/tiny")' in card and "1.234" in card and "(bfloat16)" in card
    code, out, err = run_cli("sample", "--checkpoint", tmp_path / "folder", "--n", 2, "--out",
                             tmp_path / "samples", "--device", "cpu")
    assert code == 0, err

    code, out, err = run_cli("export", "--checkpoint", tmp_path / "ours.safetensors", "--out",
                             tmp_path / "folder")
    assert code == 2 and "already holds" in err and len(err.strip().splitlines()) == 1
    assert run_cli("export", "--checkpoint", tmp_path / "ours.safetensors", "--out", tmp_path / "folder",
                   "--force")[0] == 0
    (tmp_path / "bad.json").write_text("{")
    code, out, err = run_cli("export", "--checkpoint", tmp_path / "ours.safetensors", "--out",
                             tmp_path / "other", "--card", tmp_path / "bad.json")
    assert code == 2 and "not valid JSON" in err and not (tmp_path / "other").exists()


@pytest.mark.parametrize("text", ["a\x7fb", "nul\x00 esc\x1b", "sur\ud800rogate", "\u2028\ufffe", 'q"\\z\n'])
def test_card_strings_with_any_character_keep_the_front_matter_valid(text):
    """A DEL (or any character YAML does not allow as it is) in a --card string is written as an escape."""
    yaml = pytest.importorskip("yaml")
    from fractalgen.formats.card import yaml_scalar

    assert yaml.safe_load(f"k: {yaml_scalar(text)}")["k"] == text


# ---- a fuzzed config.json: the model, or one line of the project's errors --------------------------------

# JSON values of every type, numbers far outside any field's range included (NaN and the infinities are
# written as Python's json writes them, which the reader refuses).
NUMBERS = (st.integers(-3, 2**20 + 1) | st.floats() | st.sampled_from([0, 1, -1, 0.5, 1e300, 2**31, 2**63, -2**70]))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=6) | NUMBERS.map(str),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=10)
# The fields a folder's config.json holds (drawn most often), every ModelConfig field and a few others.
WRITTEN_KEYS = sorted(json.loads(json.dumps(fractalgen.formats.folder.folder_config(tiny_model(TINY), {}))))
OTHER_KEYS = sorted({*fractalgen.ModelConfig.__dataclass_fields__, "label2id", "fractal_level", "grad_checkpointing",
                     "unknown"})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "folder"
    fractalgen.save_pretrained(tiny_model(TINY), folder)
    return folder


def fuzzed_load(tiny_folder, folder, document) -> None:
    """Load a copy of the tiny folder whose config.json holds `document`: the model or one line."""
    shutil.copytree(tiny_folder, folder)
    (folder / "config.json").write_text(json.dumps(document))
    try:
        model = fractalgen.load(folder)
    except (CheckpointError, fractalgen.ConfigError, UserError) as e:
        assert str(e) and "\n" not in str(e), str(e)
        return
    assert model.config.num_classes >= 0 and sum(p.numel() for p in model.parameters()) > 0


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(WRITTEN_KEYS) | st.sampled_from(OTHER_KEYS),
                               st.lists(st.integers(-1, 2**21), min_size=3, max_size=3)  # one per level
                               | st.lists(NUMBERS, min_size=1, max_size=4) | JSON, max_size=3))
@example(changes={"embed_dim_list": [2**20, 2**19, 2**18]})  # too large for any machine: the size check
@example(changes={"num_blocks_list": [2**20, 1, 1]})  # more tensors than the file holds
@example(changes={"embed_dim_list": [32, 8, 8], "num_heads_list": [2, 2, 2]})  # another shape: the key named
def test_fuzzed_config_fields_load_or_are_one_line(tiny_folder, tmp_path_factory, changes):
    """Values of every type in every field: each ends in a model or one line (the size check refuses
    widths and block counts that would not fit, before building)."""
    config = json.loads((tiny_folder / "config.json").read_text())
    fuzzed_load(tiny_folder, tmp_path_factory.mktemp("case") / "folder", {**config, **changes})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=JSON)
def test_a_fuzzed_config_document_is_one_line(tiny_folder, tmp_path_factory, document):
    fuzzed_load(tiny_folder, tmp_path_factory.mktemp("case") / "folder", document)
