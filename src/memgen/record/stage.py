"""Stage `record`: last-prompt-token activations of every flipped-pair prompt, every layer.

    memgen record --run-dir runs/color                  # record.sites=[resid,mlp]
    memgen record --run-dir runs/color 'record.sites=[resid,mlp,attn]'

Reads `behave/pairs.jsonl` and the model in `train/model`; writes one float32 array
`<kind>.npy` of shape [N, n_layers, width] per site kind (rows in `pairs.jsonl`
order), `answer_margin.npy` [N, n_layers] (the logit-lens answer readout, see
`memgen.record.readout`; needs the resid site) and `index.json` (labels 1 = mem /
0 = gen, pair ids, shapes, model identity). Read it back with
`memgen.core.recorded.read_record`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from transformers import PreTrainedTokenizerBase

from memgen.core import distributed
from memgen.core.artifacts import Step, write_json
from memgen.core.config import RunConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import PAIRS_FILE, PairRows, read_pairs
from memgen.core.forks import Fork, answer_forks
from memgen.core.generation import left_padded_positions, padded_batches
from memgen.core.hooks import Recording, record
from memgen.core.modeling import load_run_model, model_identity, unwrap
from memgen.core.recorded import READOUT, pair_rows
from memgen.core.sites import Site, SiteKind, all_sites, n_layers, site_width
from memgen.record.gradients import margin_gradients
from memgen.record.masks import learned_mask
from memgen.record.patching import patching_scores
from memgen.record.readout import answer_margins, readout_tokens

log = logging.getLogger(__name__)


def allocate(model: torch.nn.Module, kinds: Sequence[SiteKind], n: int) -> dict[str, np.ndarray]:
    """In-memory float32 [n, n_layers, width] arrays, one per kind."""
    layers = n_layers(model)
    return {k: np.empty((n, layers, site_width(model, k)), dtype=np.float32) for k in kinds}


@torch.no_grad()
def _checked_out(
    model: torch.nn.Module,
    kinds: Sequence[SiteKind],
    n: int,
    out: Mapping[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """`out`, checked to hold an [n, n_layers, width] array per kind, or new arrays."""
    arrays = dict(out) if out is not None else allocate(model, kinds, n)
    for kind in kinds:
        wanted = (n, n_layers(model), site_width(model, kind))
        if kind not in arrays or arrays[kind].shape != wanted:
            got = arrays[kind].shape if kind in arrays else None
            raise MemgenError(f"out[{kind!r}] must have shape {wanted} (got {got})")
    return arrays


def _per_kind(
    rec: Recording, sites: Sequence[Site], kinds: Sequence[SiteKind]
) -> dict[str, np.ndarray]:
    """A batch's recording per site kind, [batch, n_layers, width], one transfer per kind."""
    found: dict[str, np.ndarray] = {}
    for kind in kinds:
        layers = torch.stack([rec[site] for site in sites if site.kind == kind])
        found[kind] = layers.transpose(0, 1).float().cpu().numpy()
    return found


def record_last_token(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    kinds: Sequence[SiteKind],
    chat: bool,
    batch_size: int,
    *,
    out: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Activations at each prompt's last token: {kind: float32 [N, n_layers, width]}.

    Pass `out` (e.g. memory-mapped arrays of that shape) to stream into it instead of
    allocating. Position ids follow the attention mask, as in `generate`, so a
    prompt's activations do not depend on how much padding its batch needs.
    """
    if not prompts:
        raise MemgenError("no prompts to record")
    arrays = _checked_out(model, kinds, len(prompts), out)
    sites = all_sites(model, kinds)
    model.eval()
    device = next(model.parameters()).device
    batches = padded_batches(
        tokenizer,
        prompts,
        chat=chat,
        batch_size=batch_size,
        device=device,
        desc="record",
        progress=progress,
    )
    # The transformer without its LM head: full-vocabulary logits for every token would be
    # [batch, seq, vocab] floats (GBs at 128k vocabularies) that nothing here reads.
    body = unwrap(model).base_model

    def activations(
        batch: tuple[list[int], torch.Tensor, torch.Tensor],
    ) -> tuple[list[int], dict[str, np.ndarray]]:
        rows, ids, mask = batch
        rec.clear()
        body(
            input_ids=ids,
            attention_mask=mask,
            position_ids=left_padded_positions(mask),
            use_cache=False,
        )
        return rows, _per_kind(rec, sites, kinds)

    with record(model, sites) as rec:
        # Under a launcher each process records every Nth batch and sends it to the main
        # process, which writes it: the arrays are filled there alone.
        for rows, found in distributed.parallel_map(activations, batches, to_main=True):
            for kind in kinds:
                arrays[kind][rows] = found[kind]
    return arrays


def _record_gradients(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    forks: Sequence[Fork],
    activations: Mapping[str, np.ndarray],
    cfg: RunConfig,
    out: Path,
) -> None:
    """`grad_<kind>.npy` beside each recorded `<kind>.npy`, of its shape: the answer
    margin's gradient there."""
    kinds: list[SiteKind] = list(dict.fromkeys(cfg.record.sites))  # the keys of activations
    grads: dict[str, np.ndarray] = {
        kind: open_memmap(
            out / f"grad_{kind}.npy", mode="w+", dtype=np.float32, shape=activations[kind].shape
        )
        for kind in kinds
    }
    margin_gradients(
        model,
        tokenizer,
        prompts,
        forks,
        kinds,
        chat=cfg.train.chat,
        batch_size=cfg.record.gradient_batch_size,
        out=grads,
    )
    for array in grads.values():
        array.flush()  # type: ignore[attr-defined]


def _usable_pairs(pairs: PairRows, forks: Sequence[Fork], n: int) -> list[tuple[int, int]]:
    """The first `n` pairs by id, (mem row, gen row), whose members both have a margin."""
    mem, gen = pair_rows(np.asarray(pairs.labels), np.asarray(pairs.pair_ids))
    valid = [fork.decides for fork in forks]
    return [(int(m), int(g)) for m, g in zip(mem, gen, strict=True) if valid[m] and valid[g]][:n]


def _record_causal(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: PairRows,
    forks: Sequence[Fork],
    activations: Mapping[str, np.ndarray],
    cfg: RunConfig,
    out: Path,
) -> dict[str, dict[str, dict[str, int]]]:
    """`<name>_<kind>.npy` [L, W] for exact patching at each of `record.patching` and each
    learned mask of `record.masks` (MLP); what made each (`Recorded.causal`)."""
    rc, chat = cfg.record, cfg.train.chat
    made: dict[str, dict[str, dict[str, int]]] = {}
    usable = _usable_pairs(pairs, forks, rc.patching_pairs)
    for kind in rc.patching:
        scores = patching_scores(
            model,
            tokenizer,
            pairs.prompts,
            usable,
            activations[kind],
            forks,
            kind,
            chat=chat,
            batch_size=rc.batch_size,
        )
        np.save(out / f"patching_{kind}.npy", scores)
        made.setdefault("patching", {})[kind] = {"n_pairs": len(usable)}
    for method in rc.masks:
        scores = learned_mask(
            model,
            tokenizer,
            pairs.prompts,
            [fork.swapped() for fork in forks],  # the rule answer's, from the memorized one
            method,
            steps=rc.mask_steps,
            lr=rc.mask_lr,
            penalty=rc.mask_penalty,
            batch_size=32,
            chat=chat,
            seed=cfg.seed,
        )
        np.save(out / f"{method}_mlp.npy", scores)
        made[method] = {"mlp": {"n_prompts": len(pairs.prompts), "steps": rc.mask_steps}}
    return made


def _open_arrays(
    out: Path, n: int, shapes: Mapping[SiteKind, Mapping[str, int]]
) -> dict[str, np.ndarray]:
    """A float32 `<kind>.npy` [n, n_layers, width] memory map per site kind, to stream into."""
    return {
        kind: open_memmap(
            out / f"{kind}.npy",
            mode="w+",
            dtype=np.float32,
            shape=(n, shape["n_layers"], shape["width"]),
        )
        for kind, shape in shapes.items()
    }


def run_record(step: Step) -> None:
    cfg, stage = step.cfg, step.stage
    train, behave = (step.inputs["train"], step.inputs["behave"])
    pairs = read_pairs(behave.path / PAIRS_FILE)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    kinds: list[SiteKind] = list(dict.fromkeys(cfg.record.sites))
    out = stage.begin()
    layers = n_layers(model)
    shapes = {kind: {"n_layers": layers, "width": site_width(model, kind)} for kind in kinds}
    arrays = _open_arrays(out, len(pairs.prompts), shapes)
    record_last_token(
        model,
        tokenizer,
        pairs.prompts,
        kinds,
        cfg.train.chat,
        cfg.record.batch_size,
        out=arrays,
        progress=True,
    )
    if not distributed.is_main():
        return  # its batches went to the main process, which writes the record
    readout, gradients = None, False
    causal: dict[str, dict[str, dict[str, int]]] = {}
    if pairs.answers is not None:
        forks = answer_forks(tokenizer, *pairs.answers)  # each memorized answer's, from the rule's
        if "resid" in arrays:
            readout = READOUT
            margins = answer_margins(model, arrays["resid"], *readout_tokens(tokenizer, forks))
            np.save(out / readout, margins)
        if cfg.record.gradients:
            _record_gradients(model, tokenizer, pairs.prompts, forks, arrays, cfg, out)
            gradients = True
        if cfg.record.patching or cfg.record.masks:
            causal = _record_causal(model, tokenizer, pairs, forks, arrays, cfg, out)
    for array in arrays.values():
        array.flush()  # type: ignore[attr-defined]
    del arrays
    index = {
        "labels": pairs.labels,
        "pair_ids": pairs.pair_ids,
        "sites": shapes,
        "model": model_identity(model),
        "readout": readout,
        "gradients": gradients,
        "causal": causal,
    }
    write_json(out / "index.json", index)
    summary = {
        "n": len(pairs.labels),
        "n_mem": sum(pairs.labels),
        "n_gen": len(pairs.labels) - sum(pairs.labels),
        "n_pairs": len(set(pairs.pair_ids)),
        "sites": shapes,
    }
    step.finish(summary)
    log.info("record: %d prompts x %s in %s", len(pairs.labels), ", ".join(kinds), out)
