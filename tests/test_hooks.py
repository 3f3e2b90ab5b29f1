"""`record` and `intervene`: recorded values are the model's own, edits are exact and local,
and no hook survives a context."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from conftest import _LLAMA_LIKE, FAMILY_NAMES, LAYERS
from memgen.core.errors import MemgenError
from memgen.core.hooks import Intervention, Recording, intervene, record
from memgen.core.modeling import unwrap
from memgen.core.sites import SITE_KINDS, Site, all_sites, resolve, site_width

LAST = LAYERS - 1
FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}


def _layer(model: nn.Module, family: str, index: int) -> nn.Module:
    base = unwrap(model)
    layers = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}.get(family, "model.layers")
    return base.get_submodule(f"{layers}.{index}")


def _hooks(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: (len(module._forward_hooks), len(module._forward_pre_hooks))
        for name, module in model.named_modules()
    }


@torch.no_grad()
def test_resid_equals_output_hidden_states(
    family_model: tuple[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    family, model = family_model
    with record(model, all_sites(model, ["resid"])) as rec:
        hidden = model(input_ids=token_ids, output_hidden_states=True).hidden_states
    for layer in range(LAST):
        assert torch.equal(rec[Site("resid", layer)], hidden[layer + 1][:, -1])
    # HF's last entry has the final norm applied; the site is the raw block output.
    norm = unwrap(model).get_submodule(FINAL_NORM.get(family, "model.norm"))
    last = rec[Site("resid", LAST)]
    assert not torch.allclose(last, hidden[-1][:, -1])
    torch.testing.assert_close(norm(last), hidden[-1][:, -1])


@torch.no_grad()
def test_sites_add_up_to_the_block(
    family_model: tuple[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    """mlp recomputed by hand from resid/attn recordings, and resid from mlp."""
    family, model = family_model
    with record(model, all_sites(model, SITE_KINDS)) as rec:
        hidden = model(input_ids=token_ids, output_hidden_states=True).hidden_states
    for index in range(LAYERS):
        block = _layer(model, family, index)
        x = hidden[index][:, -1]
        attn, mlp = rec[Site("attn", index)], rec[Site("mlp", index)]
        if family == "gpt2":
            h = x + attn
            inner = block.ln_2(h)
            manual = block.mlp.act(block.mlp.c_fc(inner))
            resid = h + block.mlp.c_proj(mlp)
        elif family == "gpt_neox":  # parallel residual: the MLP reads the block input
            inner = block.post_attention_layernorm(x)
            manual = block.mlp.act(block.mlp.dense_h_to_4h(inner))
            resid = x + attn + block.mlp.dense_4h_to_h(mlp)
        else:
            h = x + attn
            inner = block.post_attention_layernorm(h)
            manual = block.mlp.act_fn(block.mlp.gate_proj(inner)) * block.mlp.up_proj(inner)
            resid = h + block.mlp.down_proj(mlp)
        torch.testing.assert_close(mlp, manual)
        torch.testing.assert_close(rec[Site("resid", index)], resid)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@torch.no_grad()
def test_lora_wrapped_mlp_site_sees_the_base_layers_input(
    family: str, tiny_lora_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = tiny_lora_models[family]
    wrapper = resolve(model, Site("mlp", 1))
    seen: list[torch.Tensor] = []
    handle = wrapper.base_layer.register_forward_pre_hook(lambda m, a: seen.append(a[0][:, -1]))
    try:
        with record(model, [Site("mlp", 1)]) as rec:
            model(input_ids=token_ids)
    finally:
        handle.remove()
    assert torch.equal(rec[Site("mlp", 1)], seen[0])


@pytest.mark.parametrize("model_type", ["qwen3", "gemma", "phi3"])
@torch.no_grad()
def test_extra_families_resid_equals_hidden_states(
    model_type: str, token_ids: torch.Tensor
) -> None:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, head_dim=8, **_LLAMA_LIKE)
    model = AutoModelForCausalLM.from_config(config).eval()
    with record(model, [Site("resid", 0), Site("mlp", 0)]) as rec:
        hidden = model(input_ids=token_ids, output_hidden_states=True).hidden_states
    assert torch.equal(rec[Site("resid", 0)], hidden[1][:, -1])
    assert rec[Site("mlp", 0)].shape == (3, site_width(model, "mlp"))


@torch.no_grad()
def test_recording_collects_every_forward_call(
    tiny_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model, site = tiny_models["llama"], Site("mlp", 0)
    with record(model, [site]) as rec:
        model(input_ids=token_ids)
        model(input_ids=token_ids[:2, :4])
    assert len(rec.calls(site)) == 2
    assert rec[site].shape == (5, site_width(model, "mlp"))
    assert torch.equal(rec["mlp.0"], rec[site])
    assert not rec[site].requires_grad
    with pytest.raises(MemgenError, match="not recorded"):
        rec.calls(Site("mlp", 1))


def _all_hooks_gone(model: nn.Module, before: dict[str, tuple[int, int]]) -> None:
    assert _hooks(model) == before
    assert all(counts == (0, 0) for counts in before.values())


@pytest.mark.parametrize("lora", [False, True])
def test_no_hook_survives_an_exception(
    lora: bool, make_tiny: Callable[..., PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = make_tiny("llama", lora=lora)  # fresh: HF's own capture hooks not yet installed
    before = _hooks(model)
    sites = all_sites(model, SITE_KINDS)
    shifts = [Intervention(site, (0, 1), "add", (1.0,)) for site in sites]
    with pytest.raises(RuntimeError, match="boom"), intervene(model, shifts), record(model, sites):
        model(input_ids=token_ids)
        raise RuntimeError("boom")
    _all_hooks_gone(model, before)
    # An error raised inside the model's forward (token id out of the vocabulary).
    with pytest.raises(IndexError), intervene(model, shifts), record(model, sites):
        model(input_ids=token_ids + 1000)
    _all_hooks_gone(model, before)
    # A site that does not resolve: nothing is registered at all.
    with (
        pytest.raises(MemgenError, match="valid layers"),
        record(model, [sites[0], Site("mlp", 7)]),
    ):
        pass
    _all_hooks_gone(model, before)


@pytest.mark.parametrize("position", ["last", "all"])
@torch.no_grad()
def test_identity_interventions_are_bit_identical(
    position: str, family_model: tuple[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    _, model = family_model
    plain = model(input_ids=token_ids).logits
    identities = []
    for site in all_sites(model, SITE_KINDS):
        everyone = tuple(range(site_width(model, site.kind)))
        identities.append(Intervention(site, everyone, "add", (0.0,), position))  # type: ignore[arg-type]
        identities.append(Intervention(site, everyone, "scale", (1.0,), position))  # type: ignore[arg-type]
    with intervene(model, identities):
        assert torch.equal(model(input_ids=token_ids).logits, plain)


def test_identity_interventions_keep_the_graph_with_autograd(
    tiny_lora_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = tiny_lora_models["gpt2"]
    plain = model(input_ids=token_ids).logits
    identities = [
        Intervention(site, (0, 3), "add", (0.0,)) for site in all_sites(model, SITE_KINDS)
    ]
    with intervene(model, identities):
        steered = model(input_ids=token_ids).logits
    assert torch.equal(steered, plain)
    steered.sum().backward()  # the edit is out of place when autograd is on


OPS = {
    "add": (lambda a, v: a + v),
    "scale": (lambda a, v: a * v),
    "set": (lambda a, v: v.expand_as(a)),
    "zero": (lambda a, v: torch.zeros_like(a)),
}


@pytest.mark.parametrize("kind", ["resid", "mlp", "attn"])
@torch.no_grad()
def test_steering_changes_exactly_the_chosen_neurons(
    kind: str, family_model: tuple[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    _, model = family_model
    site, neurons = Site(kind, 0), [1, 5, 17]  # type: ignore[arg-type]
    with record(model, [site], position="all") as before:
        plain = model(input_ids=token_ids).logits
    a = before[site]
    chosen = torch.zeros_like(a, dtype=torch.bool)
    chosen[:, -1, neurons] = True
    for op, rule in OPS.items():
        values = () if op == "zero" else (2.0, -3.0, 0.5)
        edit = Intervention(site, tuple(neurons), op, values)  # type: ignore[arg-type]
        # Registered later, the recording sees the edited activations.
        with intervene(model, [edit]), record(model, [site], position="all") as after:
            steered = model(input_ids=token_ids).logits
        b = after[site]
        assert torch.equal(a[~chosen], b[~chosen]), op
        expected = rule(a[:, -1, neurons], torch.tensor(values or (0.0,)))
        torch.testing.assert_close(b[:, -1, neurons], expected)
        assert not torch.equal(steered, plain), op


@torch.no_grad()
def test_interventions_at_one_site_compose_in_order(
    tiny_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model, site = tiny_models["qwen2"], Site("resid", 1)
    with record(model, [site]) as before:
        model(input_ids=token_ids)
    both = [
        Intervention(site, (2, 4), "add", (1.0, 2.0)),
        Intervention(site, (4,), "scale", (3.0,)),
    ]
    with intervene(model, both), record(model, [site]) as after:
        model(input_ids=token_ids)
    a, b = before[site], after[site]
    torch.testing.assert_close(b[:, 2], a[:, 2] + 1.0)
    torch.testing.assert_close(b[:, 4], (a[:, 4] + 2.0) * 3.0)


@torch.no_grad()
def test_intervention_applies_at_every_generated_token_on_a_lora_model(
    tiny_lora_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model, site = tiny_lora_models["llama"], Site("resid", 1)
    kwargs = {
        "max_new_tokens": 4,
        "min_new_tokens": 4,
        "do_sample": False,
        "pad_token_id": 0,
        "output_scores": True,
        "return_dict_in_generate": True,
    }
    plain = model.generate(input_ids=token_ids, **kwargs)
    pinned = Intervention(site, (3, 8), "set", (7.0, -7.0))
    with intervene(model, [pinned]), record(model, [site], position="all") as rec:
        steered = model.generate(input_ids=token_ids, **kwargs)
    calls = rec.calls(site)
    assert len(calls) == 4  # the prompt, then one call per new token (KV cache)
    assert [c.shape[1] for c in calls] == [token_ids.shape[1], 1, 1, 1]
    for call in calls:
        assert torch.equal(call[:, -1, [3, 8]], torch.tensor([[7.0, -7.0]]).expand(3, 2))
    for plain_scores, steered_scores in zip(plain.scores, steered.scores, strict=True):
        assert not torch.equal(plain_scores, steered_scores)


def test_intervention_json_round_trip() -> None:
    iv = Intervention(Site("mlp", 2), (4, 1, 9), "scale", (0.5, 2.0, -1.0), "all")
    row = json.loads(json.dumps(iv.to_dict()))
    assert row["site"] == {"kind": "mlp", "layer": 2}
    assert Intervention.from_dict(row) == iv
    assert hash(Intervention.from_dict(row)) == hash(iv)
    assert Intervention.from_dict({**row, "neurons": [4, 1, 9]}).neurons == (4, 1, 9)
    assert Intervention.from_dict({**row, "site": "mlp.2"}) == iv
    assert Intervention.from_dict({**row, "neurons": [4.0, 1, 9]}).neurons == (4, 1, 9)
    with pytest.raises(MemgenError, match="not an intervention"):
        Intervention.from_dict({**row, "values": ["x", 1, 2]})


def test_recording_is_a_mapping_of_its_sites() -> None:
    rec = Recording([Site("resid", 0)])
    assert Site("resid", 0) in rec and "resid.0" in rec
    assert "mlp.1" not in rec and "not-a-site" not in rec
    assert rec.get(Site("mlp", 1), "absent") == "absent"
    with pytest.raises(MemgenError, match="was not recorded"):
        rec["mlp.1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"op": "shift"}, "not one of"),
        ({"position": "first"}, "one of last, prompt, all"),
        ({"neurons": ()}, "no neurons"),
        ({"neurons": (1, 1)}, "repeat"),
        ({"neurons": (-1,)}, ">= 0"),
        ({"values": (1.0, 2.0, 3.0)}, "one value per neuron"),
        ({"op": "zero", "values": (1.0,)}, "takes no values"),
        ({"neurons": (1.9,)}, "whole numbers"),
        ({"neurons": "12"}, "whole numbers"),
    ],
)
def test_bad_interventions_are_errors(kwargs: dict, message: str) -> None:
    fields = {"site": Site("resid", 0), "neurons": (1, 2), "op": "add", "values": (1.0,), **kwargs}
    with pytest.raises(MemgenError, match=message):
        Intervention(**fields)


def test_out_of_range_neuron_or_layer_fails_before_any_hook(
    tiny_models: dict[str, PreTrainedModel],
) -> None:
    model = tiny_models["gpt_neox"]
    before = _hooks(model)
    width = site_width(model, "mlp")
    with (
        pytest.raises(MemgenError, match=rf"valid 0\.\.{width - 1}"),
        intervene(model, [Intervention(Site("mlp", 0), (width,), "zero")]),
    ):
        pass
    with (
        pytest.raises(MemgenError, match="out of range"),
        intervene(model, [Intervention(Site("attn", 5), (0,), "zero")]),
    ):
        pass
    assert _hooks(model) == before
    with pytest.raises(MemgenError, match="expected"):
        Intervention.from_dict({"site": {"kind": "mlp"}, "neurons": [1], "op": "add"})


@torch.no_grad()
def test_recording_at_the_prompt_keeps_only_the_prompts_last_position_during_generate(
    tiny_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model, site = tiny_models["llama"], Site("mlp", 0)
    kwargs = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    with record(model, [site], position="prompt") as prompt, record(model, [site]) as last:
        model.generate(input_ids=token_ids, **kwargs)
    assert len(last.calls(site)) == 3 and len(prompt.calls(site)) == 1
    assert torch.equal(prompt[site], last.calls(site)[0])
