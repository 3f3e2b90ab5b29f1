"""Neuron-set files: round trip, damaged files, and sets applied to the wrong model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from memgen.core.config import set_name
from memgen.core.errors import MemgenError
from memgen.core.modeling import model_identity
from memgen.core.neuron_set import NeuronSet


def tiny_gpt2(n_embd: int = 32, n_layer: int = 2) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=50))


def make_set(model: GPT2LMHeadModel, site: str = "mlp") -> NeuronSet:
    return NeuronSet(
        model=model_identity(model),
        site=site,
        scorer="pearson",
        top_n=0.05,
        n_layers=2,
        width=128 if site == "mlp" else 32,
        layers=np.array([1, 0, 1]),
        neurons=np.array([7, 30, 3]),
        nmd=np.array([0.5, -0.25, 0.125], dtype=np.float32),
        score=np.array([0.9, -0.8, 0.7], dtype=np.float32),
        meta={"task": "color"},
    )


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return tiny_gpt2()


def test_round_trip(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    original = make_set(model)
    json_path, arrays_path = original.save(tmp_path / "sets" / "top5")
    assert json_path.name == "top5.json" and arrays_path.name == "top5.safetensors"
    info = json.loads(json_path.read_text())
    assert info["per_layer_counts"] == [1, 2]
    assert info["n_neurons"] == 3
    for path in (tmp_path / "sets" / "top5", json_path, arrays_path):
        loaded = NeuronSet.load(path)
        assert loaded.metadata() == original.metadata()
        for name in ("layers", "neurons", "nmd", "score"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))


def test_set_names_have_no_dots() -> None:
    assert [set_name(f) for f in (0.05, 0.1, 0.025, 1.0)] == ["top5", "top10", "top2p5", "top100"]


def test_missing_file(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    with pytest.raises(MemgenError, match="memgen neurons"):
        NeuronSet.load(tmp_path / "top5")
    make_set(model).save(tmp_path / "top5")
    (tmp_path / "top5.safetensors").unlink()
    with pytest.raises(MemgenError, match=r"top5\.safetensors"):
        NeuronSet.load(tmp_path / "top5.json")


@pytest.mark.parametrize("damaged", ["top5.json", "top5.safetensors"])
def test_corrupt_file(tmp_path: Path, model: GPT2LMHeadModel, damaged: str) -> None:
    make_set(model).save(tmp_path / "top5")
    path = tmp_path / damaged
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(MemgenError, match="corrupt"):
        NeuronSet.load(tmp_path / "top5")


def test_malformed_field(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    make_set(model).save(tmp_path / "top5")
    path = tmp_path / "top5.json"
    path.write_text(path.read_text().replace('"top_n": 0.05', '"top_n": "five"'))
    with pytest.raises(MemgenError, match="malformed field"):
        NeuronSet.load(tmp_path / "top5")


def test_mismatched_lengths(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    from safetensors.numpy import load_file, save_file

    make_set(model).save(tmp_path / "top5")
    arrays = load_file(str(tmp_path / "top5.safetensors"))
    arrays["nmd"] = arrays["nmd"][:2]
    save_file(arrays, str(tmp_path / "top5.safetensors"))
    with pytest.raises(MemgenError, match="differ in length"):
        NeuronSet.load(tmp_path / "top5")


def test_indices_out_of_range(model: GPT2LMHeadModel) -> None:
    good = make_set(model)
    with pytest.raises(MemgenError, match="neurons outside"):
        NeuronSet(**{**vars(good), "neurons": np.array([7, 128, 3])})


def test_compatible_with_its_model_even_after_moving(model: GPT2LMHeadModel) -> None:
    neuron_set = make_set(model)
    neuron_set.check_compatible(model)
    moved = NeuronSet(**{**vars(neuron_set), "model": {**neuron_set.model, "name_or_path": "/x"}})
    moved.check_compatible(model)  # name_or_path is not compared


@pytest.mark.parametrize("site", ["mlp", "resid"])
def test_incompatible_model(model: GPT2LMHeadModel, site: str) -> None:
    neuron_set = make_set(model, site)
    for other in (tiny_gpt2(n_embd=48), tiny_gpt2(n_layer=3)):
        with pytest.raises(
            MemgenError, match=r"was made for gpt2 .* but the model is .*memgen neurons"
        ):
            neuron_set.check_compatible(other)


def test_wrong_site_width(model: GPT2LMHeadModel) -> None:
    # Same architecture, but the set claims an MLP width the model does not have.
    neuron_set = make_set(model)
    wrong = NeuronSet(**{**vars(neuron_set), "width": 200})
    with pytest.raises(MemgenError, match="mlp width 200"):
        wrong.check_compatible(model)
