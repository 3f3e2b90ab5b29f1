"""Sites: named places in a model where activations are read or changed.

    from memgen.core.sites import Site, resolve, all_sites
    site = Site("mlp", 3)            # str(site) == "mlp.3"
    module = resolve(model, site)    # the down projection of layer 3 (its input is the site)

A site kind means the same thing in every architecture:

- `resid`: the decoder layer's output hidden state (the residual stream after the
  block). For layers before the last it equals Hugging Face's
  `output_hidden_states[layer + 1]`; for the last layer it is the raw block output,
  whereas HF's final entry has the final norm applied.
- `mlp`: the MLP's hidden neurons, i.e. the input of the down projection
  (GPT-2 `mlp.c_proj`, LLaMA-style `act(gate(x)) * up(x)` into `mlp.down_proj`,
  GPT-NeoX `mlp.dense_4h_to_h`).
- `attn`: the attention module's output (its first element when it returns a tuple).

`FAMILIES` holds one declarative entry per architecture, keyed by `config.model_type`;
supporting a new architecture is one entry there. Paths are resolved against the
model under any PEFT wrapping (`memgen.core.modeling.unwrap`), so a LoRA-wrapped
module resolves to the wrapper, whose input and output are the site's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from memgen.core.errors import MemgenError
from memgen.core.modeling import unwrap

SiteKind = Literal["resid", "mlp", "attn"]
Reads = Literal["input", "output"]
SITE_KINDS: tuple[SiteKind, ...] = get_args(SiteKind)


@dataclass(frozen=True, order=True)
class Site:
    """A site kind at one decoder layer (0-based)."""

    kind: SiteKind
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise MemgenError(f"site kind {self.kind!r} is not one of {', '.join(SITE_KINDS)}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise MemgenError(f"site layer {self.layer!r} must be an integer >= 0")

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """`"resid.3"` -> `Site("resid", 3)`."""
        kind, sep, layer = text.partition(".")
        if not sep or not layer.isdigit():
            raise MemgenError(f"site {text!r} is not kind.layer (e.g. resid.3)")
        return cls(kind, int(layer))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps its decoder layers and each site kind inside a layer.

    `places[kind]` is (module path inside a layer, "" for the layer itself; whether the
    site is that module's input or output). `final_norm` is the norm between the last
    layer and the unembedding, which the logit lens applies to every layer.
    """

    layers: str
    places: Mapping[SiteKind, tuple[str, Reads]]
    final_norm: str


def _llama_like() -> Family:
    return Family(
        "model.layers",
        {
            "resid": ("", "output"),
            "mlp": ("mlp.down_proj", "input"),
            "attn": ("self_attn", "output"),
        },
        "model.norm",
    )


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        "transformer.h",
        {"resid": ("", "output"), "mlp": ("mlp.c_proj", "input"), "attn": ("attn", "output")},
        "transformer.ln_f",
    ),
    "gpt_neox": Family(
        "gpt_neox.layers",
        {
            "resid": ("", "output"),
            "mlp": ("mlp.dense_4h_to_h", "input"),
            "attn": ("attention", "output"),
        },
        "gpt_neox.final_layer_norm",
    ),
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "gemma": _llama_like(),
    # Phi-3 fuses gate and up into one projection; the down projection's input is
    # still up * act(gate).
    "phi3": _llama_like(),
}


@dataclass(frozen=True)
class Hookpoint:
    """A resolved site: the module to hook and whether the site is its input or output."""

    site: Site
    module: torch.nn.Module
    path: str
    reads: Reads


def family(model: torch.nn.Module) -> Family:
    model_type = str(getattr(unwrap(model).config, "model_type", ""))
    if model_type not in FAMILIES:
        raise MemgenError(
            f"no site table for model_type {model_type!r} (supported: "
            f"{', '.join(sorted(FAMILIES))}); add one entry to FAMILIES in "
            "memgen/core/sites.py naming its decoder layers and each site's module"
        )
    return FAMILIES[model_type]


def _submodule(root: torch.nn.Module, path: str, what: str) -> torch.nn.Module:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        raise MemgenError(
            f"{type(root).__name__} has no module {path!r} ({what}); "
            "fix its entry in FAMILIES in memgen/core/sites.py"
        ) from None


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    fam = family(model)
    layers = _submodule(unwrap(model), fam.layers, "the decoder layers")
    if not isinstance(layers, torch.nn.ModuleList):
        raise MemgenError(f"{fam.layers!r} is not a list of layers; fix FAMILIES in sites.py")
    return layers


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied to the last layer's output before the unembedding."""
    fam = family(model)
    return _submodule(unwrap(model), fam.final_norm, "the final norm")


def n_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def locate(model: torch.nn.Module, site: Site) -> Hookpoint:
    """The module behind `site` and whether the site is its input or its output."""
    fam = family(model)
    layers = decoder_layers(model)
    if not 0 <= site.layer < len(layers):
        raise MemgenError(
            f"site {site}: layer {site.layer} is out of range; "
            f"valid layers are 0..{len(layers) - 1}"
        )
    path, reads = fam.places[site.kind]
    module = _submodule(layers[site.layer], path, f"site {site.kind}")
    full = ".".join(part for part in (fam.layers, str(site.layer), path) if part)
    return Hookpoint(site, module, full, reads)


def resolve(model: torch.nn.Module, site: Site) -> torch.nn.Module:
    return locate(model, site).module


def _in_features(module: torch.nn.Module) -> int:
    # nn.Linear and PEFT's LoRA wrappers say `in_features`; GPT-2's Conv1D says `nx`.
    for name in ("in_features", "nx"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    raise MemgenError(f"cannot tell the input width of {type(module).__name__}")


def site_width(model: torch.nn.Module, kind: SiteKind) -> int:
    """Neurons per layer at a site kind: the hidden size, or the MLP's intermediate size."""
    if kind == "mlp":
        return _in_features(resolve(model, Site("mlp", 0)))
    return int(unwrap(model).config.hidden_size)


def all_sites(model: torch.nn.Module, kinds: Iterable[SiteKind]) -> list[Site]:
    """Every layer of each kind, kind-major: resid.0, resid.1, ..., mlp.0, ..."""
    count = n_layers(model)
    return [Site(kind, layer) for kind in kinds for layer in range(count)]


@torch.no_grad()
def write_norms(model: torch.nn.Module, kind: SiteKind) -> np.ndarray:
    """[L, W]: how far one unit of each neuron moves the residual stream.

    At the MLP, the norm of the neuron's column of the down projection, read off the
    module itself (its output for each unit input, less its bias) so that a LoRA update
    and GPT-2's transposed Conv1D count; elsewhere the site is the residual stream or a
    sublayer's output, 1.
    """
    depth, width = n_layers(model), site_width(model, kind)
    if kind != "mlp":
        return np.ones((depth, width))
    norms = []
    for layer in range(depth):
        module = resolve(model, Site("mlp", layer))
        weight = next(module.parameters())
        eye = torch.eye(width, dtype=weight.dtype, device=weight.device)
        written = module(eye) - module(torch.zeros_like(eye[:1]))
        norms.append(written.norm(dim=-1).float().cpu().numpy())
    return np.stack(norms)
