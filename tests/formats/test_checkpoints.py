"""Checkpoints: the official layouts and format, our own format, and what is refused (by the key it names)."""
import argparse

import pytest
import torch
from frame import DATA, Exploit, reference_vector, tiny_model

import fractalgen
from fractalgen import CheckpointError, save_official
from fractalgen.formats.official import official_state_dict

OFFICIAL = ["fractalar_in64", "fractalmar_in64", "fractalmar_base_in256", "fractalmar_large_in256",
            "fractalmar_huge_in256"]


def read_layout(name):
    rows = (DATA / "layouts" / f"{name}.tsv").read_text().strip().splitlines()[1:]
    return {k: tuple(int(d) for d in shape.split("x")) for k, shape, _ in (r.split("\t") for r in rows)}


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_layouts(name):
    with torch.device("meta"):  # no 850M-parameter allocation
        model = fractalgen.build(name)
    ours = {k: tuple(v.shape) for k, v in official_state_dict(model).items()}
    assert ours == read_layout(name)


def test_official_export_round_trip(tmp_path):
    model, *_ = reference_vector("tiny_mar_gp4")
    original = torch.load(DATA / "tiny_mar_gp4.pth", weights_only=True)["model"]
    save_official(model, tmp_path / "out.pth")
    exported = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert list(exported) == list(exported) and set(exported) == set(original)
    for k in original:
        assert torch.equal(exported[k], original[k]), k


def test_own_format_round_trip(tmp_path):
    model = tiny_model("tiny_mar_gp4", perturb=0.3)
    fractalgen.save(model, tmp_path / "m.safetensors", sampling={"cfg": 3.0})
    loaded = fractalgen.load(tmp_path / "m.safetensors")  # no config argument: it travels with the weights
    assert loaded.config == model.config and loaded.recommended == {"cfg": 3.0}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_own_format_stores_the_recommendation_once(tmp_path):
    """The recommendation in the 'sampling' metadata only; an older file's config carrying the settings
    (and no 'sampling' of its own) reads as that recommendation, with the same settings resolved."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model = tiny_model("mnist_mar")
    fractalgen.save(model, tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), "pt") as f:
        meta = f.metadata()
    assert not {"cfg", "temperature", "cfg_schedule", "num_iter"} & set(json.loads(meta["config"]))
    assert json.loads(meta["sampling"]) == {"num_iter": [16, 8], "cfg": 2.0, "temperature": 1.0}
    older = {**json.loads(meta["config"]), "num_iter": [4, 2], "cfg": 3.0, "temperature": 1.0,
             "cfg_schedule": "falling"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "old.safetensors",
              metadata={"format": "fractalgen", "version": "1", "config": json.dumps(older)})
    loaded = fractalgen.load(tmp_path / "old.safetensors")
    assert loaded.config == model.config
    assert loaded.recommended == {"num_iter": [4, 2], "cfg": 3.0, "cfg_schedule": "falling"}
    assert fractalgen.resolve_settings(loaded) == fractalgen.SamplingSettings(3.0, "falling", 1.0, 1e-4, (4, 2))


def test_shape_mismatch_names_key(tmp_path):
    state = torch.load(DATA / "tiny_ar.pth", weights_only=True)
    state["model"]["class_emb.weight"] = torch.zeros(7, 64)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"class_emb\.weight.*\(7, 64\).*\(10, 64\)"):
        fractalgen.load(tmp_path / "bad.pth", config="tiny_ar")


def test_official_checkpoint_with_training_state(tmp_path):
    state = torch.load(DATA / "tiny_ar.pth", weights_only=True)
    state.update(epoch=3, args=argparse.Namespace(model="tiny_ar", lr=1e-4, img_size_list=[16, 4, 1]),
                 optimizer={"state": {}, "param_groups": [{"lr": 1e-4}]}, scaler={"scale": 65536.0})
    torch.save(state, tmp_path / "full.pth")
    assert isinstance(fractalgen.load(tmp_path / "full.pth"), fractalgen.FractalModel)  # config from args.model


def test_pickle_that_runs_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"model": {}, "payload": Exploit(target)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing"):
        fractalgen.load(tmp_path / "evil.pth", config="tiny_ar")
    assert not target.exists()


def test_args_with_non_plain_values_refused(tmp_path):
    state = torch.load(DATA / "tiny_ar.pth", weights_only=True)
    state["args"] = argparse.Namespace(model="tiny_ar", weights=torch.zeros(2))
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="args"):
        fractalgen.load(tmp_path / "odd.pth", config="tiny_ar")
