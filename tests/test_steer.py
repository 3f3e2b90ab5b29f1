"""The public steering API and the control interventions."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

import memgen
from conftest import HIDDEN, LAYERS
from memgen.core.errors import MemgenError
from memgen.core.hooks import record
from memgen.core.modeling import model_identity
from memgen.core.neuron_set import NeuronSet
from memgen.core.sites import Site
from memgen.steering.controls import control_interventions
from memgen.steering.stage import activation_scale, shift_size


def _neuron_set(model: PreTrainedModel, layers: list[int], neurons: list[int]) -> NeuronSet:
    rng = np.random.default_rng(0)
    return NeuronSet(
        model=model_identity(model), site="resid", scorer="pearson", top_n=0.1,
        n_layers=LAYERS, width=HIDDEN, layers=np.array(layers), neurons=np.array(neurons),
        nmd=rng.normal(0, 1, len(layers)).astype(np.float32),
        score=rng.uniform(0.5, 1, len(layers)).astype(np.float32),
    )  # fmt: skip


def _resid(model: PreTrainedModel, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    sites = [Site("resid", layer) for layer in range(LAYERS)]
    with torch.no_grad(), record(model, sites, position="all") as rec:
        model(input_ids=ids)
    return {layer: rec[Site("resid", layer)] for layer in range(LAYERS)}


@pytest.mark.parametrize("toward", ["gen", "mem"])
def test_steer_shifts_exactly_the_selected_neurons_at_the_last_position(
    make_tiny: Callable[..., PreTrainedModel], token_ids: torch.Tensor, toward: str
) -> None:
    model = make_tiny("gpt2")
    # One neuron per layer, so each recorded layer shows only its own shift.
    neurons = _neuron_set(model, [0, 1], [3, 7])
    plain = _neuron_set(model, [0], [3])  # for layer 0, downstream layers change anyway
    with memgen.steer(model, plain, alpha=3.0, toward=toward):  # type: ignore[arg-type]
        steered = _resid(model, token_ids)
    base = _resid(model, token_ids)
    sign = 1.0 if toward == "mem" else -1.0
    delta = steered[0] - base[0]
    expected = torch.zeros_like(delta)
    expected[:, -1, 3] = sign * 3.0 * float(plain.nmd[0])
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0)
    assert neurons.nmd.shape == (2,)


def test_steer_removes_its_hooks_and_refuses_other_models(
    make_tiny: Callable[..., PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = make_tiny("gpt2")
    neurons = _neuron_set(model, [0, 1], [1, 2])
    with (
        pytest.raises(RuntimeError, match="boom"),
        memgen.steer(model, neurons, alpha=1.0, toward="gen"),
    ):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    other = make_tiny("llama")
    with (
        pytest.raises(MemgenError, match="made for"),
        memgen.steer(other, neurons, alpha=1.0, toward="gen"),
    ):
        pass
    with (
        pytest.raises(MemgenError, match="toward"),
        memgen.steer(model, neurons, alpha=1.0, toward="sideways"),  # type: ignore[arg-type]
    ):
        pass


def test_steered_generate_on_a_lora_model(
    tiny_lora_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = tiny_lora_models["llama"]
    neurons = _neuron_set(model, [0, 1, 1], [0, 5, 9])
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    plain = model.generate(input_ids=token_ids, **kwargs, output_scores=True,
                           return_dict_in_generate=True)  # fmt: skip
    with memgen.steer(model, neurons, alpha=50.0, toward="mem"):
        steered = model.generate(input_ids=token_ids, **kwargs, output_scores=True,
                                 return_dict_in_generate=True)  # fmt: skip
    for before, after in zip(plain.scores, steered.scores, strict=True):
        assert not torch.allclose(before, after)


def test_controls_match_count_and_shift_sizes() -> None:
    rng = np.random.default_rng(0)
    n_layers, width = 3, 20
    nmd = rng.normal(0, 1, (n_layers, width))
    score = rng.uniform(-1, 1, (n_layers, width))
    model = {"model_type": "gpt2", "num_hidden_layers": n_layers, "hidden_size": width}
    chosen = np.argsort(-np.abs(score).ravel())[:6]
    layers, neurons = np.divmod(chosen, width)
    ns = NeuronSet(model=model, site="resid", scorer="pearson", top_n=0.1, n_layers=n_layers,
                   width=width, layers=layers, neurons=neurons, nmd=nmd.ravel()[chosen],
                   score=score.ravel()[chosen])  # fmt: skip
    sizes = sorted(2.0 * np.abs(ns.nmd))
    for kind in ("random", "low_correlation"):
        interventions = control_interventions(kind, ns, nmd, score, 2.0, "gen", rng)
        picked = {(i.site.layer, n) for i in interventions for n in i.neurons}
        values = sorted(abs(v) for i in interventions for v in i.values)
        assert len(picked) == 6
        np.testing.assert_allclose(values, sizes, rtol=1e-6)
        assert not picked & set(zip(layers.tolist(), neurons.tolist(), strict=True))
    low = control_interventions("low_correlation", ns, nmd, score, 2.0, "gen", rng)
    lowest = set(np.argsort(np.abs(score).ravel())[:6].tolist())
    assert {i.site.layer * width + n for i in low for n in i.neurons} == lowest


def test_shift_size_against_a_plain_numpy_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (300, 3, 8)) * np.array([1.0, 2.0, 4.0])[None, :, None]
    layers, neurons = np.array([0, 2, 2]), np.array([5, 1, 7])
    ns = NeuronSet(model={}, site="resid", scorer="pearson", top_n=0.1, n_layers=3, width=8,
                   layers=layers, neurons=neurons, nmd=np.array([0.5, -1.0, 2.0]),
                   score=np.ones(3))  # fmt: skip
    sd, mean_norm = activation_scale(x, chunk=64)  # chunks that do not divide 300
    np.testing.assert_allclose(sd, x.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(mean_norm, np.linalg.norm(x, axis=2).mean(axis=0), rtol=1e-10)
    found = shift_size(ns, 3.0, sd, mean_norm)
    shifts = 3.0 * np.array([0.5, 1.0, 2.0])
    assert found["sd"] == pytest.approx(np.median(shifts / x.std(axis=0)[layers, neurons]))
    per_layer = [shifts[:1] / mean_norm[0], np.linalg.norm(shifts[1:]) / mean_norm[2]]
    assert found["relative_norm"] == pytest.approx(max(float(np.max(v)) for v in per_layer))
