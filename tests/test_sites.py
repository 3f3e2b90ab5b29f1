"""Site values and the per-architecture table: every family resolves, plain and LoRA-wrapped."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, AutoModelForCausalLM, OPTConfig, OPTForCausalLM

from conftest import _LLAMA_LIKE, HIDDEN, INTERMEDIATE, LAYERS
from memgen.core.errors import MemgenError
from memgen.core.modeling import unwrap
from memgen.core.sites import (
    FAMILIES,
    SITE_KINDS,
    Site,
    all_sites,
    locate,
    n_layers,
    resolve,
    site_width,
    write_norms,
)


def test_site_str_and_parse_round_trip() -> None:
    site = Site("mlp", 3)
    assert str(site) == "mlp.3"
    assert Site.parse("mlp.3") == site
    assert Site.parse(str(Site("attn", 12))) == Site("attn", 12)


@pytest.mark.parametrize("text", ["mlp", "mlp.x", "mlp.-1", "neuron.2"])
def test_bad_site_text_is_an_error(text: str) -> None:
    with pytest.raises(MemgenError):
        Site.parse(text)


def test_bad_site_values_are_errors() -> None:
    with pytest.raises(MemgenError, match="resid, mlp, attn"):
        Site("neuron", 0)  # type: ignore[arg-type]
    with pytest.raises(MemgenError, match=">= 0"):
        Site("resid", -1)


def test_every_family_defines_every_site_kind() -> None:
    for model_type, family in FAMILIES.items():
        assert set(family.places) == set(SITE_KINDS), model_type


def test_sites_resolve_on_every_family(family_model: tuple[str, torch.nn.Module]) -> None:
    _, model = family_model
    base = unwrap(model)
    assert n_layers(model) == LAYERS
    sites = all_sites(model, SITE_KINDS)
    assert [str(s) for s in sites[:3]] == ["resid.0", "resid.1", "mlp.0"]
    for site in sites:
        point = locate(model, site)
        # Resolved against the base model: the same module object, no PEFT prefix.
        assert point.module is resolve(base, site)
        assert not point.path.startswith("base_model")
        assert point.reads == ("input" if site.kind == "mlp" else "output")
    mlp = resolve(model, Site("mlp", 1))
    if model is not base:
        # The site is the LoRA wrapper, so its input is what base and adapter both see.
        assert isinstance(mlp, LoraLayer)


def test_site_widths(family_model: tuple[str, torch.nn.Module]) -> None:
    family, model = family_model
    assert site_width(model, "resid") == HIDDEN
    assert site_width(model, "attn") == HIDDEN
    # GPT-2's MLP is 4 x hidden; the others were configured with INTERMEDIATE.
    assert site_width(model, "mlp") == (4 * HIDDEN if family == "gpt2" else INTERMEDIATE)


def test_layer_out_of_range_names_the_valid_range(tiny_models: dict) -> None:
    with pytest.raises(MemgenError, match=r"valid layers are 0\.\.1"):
        resolve(tiny_models["llama"], Site("resid", 2))


def test_unknown_architecture_lists_supported_and_the_fix() -> None:
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
        )
    )
    with pytest.raises(MemgenError, match="'opt'") as error:
        resolve(opt, Site("resid", 0))
    message = str(error.value)
    assert "gpt2" in message and "llama" in message and "FAMILIES" in message


@pytest.mark.parametrize("model_type", ["qwen3", "gemma", "phi3"])
def test_extra_families_resolve_to_real_modules(model_type: str) -> None:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, head_dim=8, **_LLAMA_LIKE)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert n_layers(model) == LAYERS
    assert site_width(model, "mlp") == INTERMEDIATE
    for site in all_sites(model, SITE_KINDS):
        assert isinstance(resolve(model, site), torch.nn.Module)


def test_write_norms_are_the_down_projection_columns_with_lora_merged(
    family_model: tuple[str, torch.nn.Module],
) -> None:
    model = copy.deepcopy(family_model[1])
    width = site_width(model, "mlp")
    expected = []
    for layer in range(LAYERS):
        module = resolve(model, Site("mlp", layer))
        if isinstance(module, LoraLayer):  # a trained adapter: B no longer zero
            torch.nn.init.normal_(module.lora_B["default"].weight)
            base = module.get_base_layer().weight + module.get_delta_weight("default")
        else:
            base = module.weight
        weight = base.detach().numpy()
        # GPT-2's Conv1D stores [in, out]; nn.Linear [out, in].
        expected.append(np.linalg.norm(weight, axis=1 if weight.shape[0] == width else 0))
    np.testing.assert_allclose(write_norms(model, "mlp"), np.stack(expected), rtol=1e-5)
    assert (write_norms(model, "resid") == 1).all()
