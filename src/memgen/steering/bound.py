"""How far could any shared shift steer? An upper bound for NMD-style steering.

NMD steering adds one fixed vector (alpha x NMD on the selected neurons, zero
elsewhere) at the last position of every forward pass. When it moves few prompts,
is that the neuron selection's fault, or can no shared vector do it? `fit_shift`
answers the second question: it trains, by gradient descent with the model frozen,
the one vector at a site that best makes the prompts' first answer token the other
behaviour's. `steering_bound` fits it on half of the prompts and generates on the
other half with it, so the figure it reports is held out.

    memgen bound --run-dir runs/color-seed0
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import RunConfig, stage_sections
from memgen.core.errors import MemgenError
from memgen.core.generation import (
    encode_prompt,
    left_padded_positions,
    pad_id_of,
    pad_left,
    padded_batches,
)
from memgen.core.hooks import Intervention, edit
from memgen.core.modeling import load_run_model
from memgen.core.recorded import read_record
from memgen.core.sites import Site, n_layers, site_width
from memgen.steering.api import Direction, shift_interventions
from memgen.steering.stage import DIRECTIONS, Steerer, activation_scale, read_labelled
from memgen.tasks.base import Example, make_task

log = logging.getLogger(__name__)


def _first_answer_tokens(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], toward: Direction
) -> torch.Tensor:
    answers = [ex.gen_answer if toward == "gen" else ex.mem_answer for ex in examples]
    ids = [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in answers]
    if any(not row for row in ids):
        raise MemgenError(f"an example has an empty {toward} answer; no token to fit toward")
    return torch.tensor([row[0] for row in ids])


def fit_shift(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    site: Site,
    toward: Direction,
    *,
    chat: bool = False,
    steps: int = 150,
    lr: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """The shared shift at `site` (last position) that best turns `examples` toward `toward`.

    Minimises the cross-entropy of the first token of each example's `toward` answer,
    with the model's weights frozen. Returns the vector and the share of `examples` whose
    greedy first token is that answer's with the vector added (the in-sample fit).
    """
    if not examples:
        raise MemgenError(f"no prompts to fit a shift toward {toward!r}")
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    targets = _first_answer_tokens(tokenizer, examples, toward).to(device)
    shift = torch.zeros(site_width(model, site.kind), device=device, requires_grad=True)

    def add_shift(activation: torch.Tensor) -> torch.Tensor:
        shifted = activation.clone()
        shifted[:, -1] += shift.to(activation.dtype)
        return shifted

    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    model.eval()
    generator = np.random.default_rng(seed)
    optimiser = torch.optim.Adam([shift], lr=lr)

    def batch_logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits at the last position, positions counted as `generate` does."""
        positions = left_padded_positions(mask)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        return logits[:, -1].float()

    def logits_of(rows: np.ndarray) -> torch.Tensor:
        return batch_logits(*pad_left([encoded[i] for i in rows], pad_id_of(tokenizer), device))

    try:
        with edit(model, {site: add_shift}):
            for _ in range(steps):
                rows = generator.choice(len(examples), min(batch_size, len(examples)), False)
                loss = torch.nn.functional.cross_entropy(
                    logits_of(rows), targets[torch.as_tensor(rows)]
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            hits = 0
            batches = padded_batches(
                tokenizer, [ex.prompt for ex in examples], chat=chat,
                batch_size=batch_size, device=device, desc="fit",
            )  # fmt: skip
            with torch.no_grad():
                for batch_rows, ids, mask in batches:
                    hits += int((batch_logits(ids, mask).argmax(-1) == targets[batch_rows]).sum())
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
    return shift.detach().cpu().numpy().astype(np.float64), hits / len(examples)


def split_half(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into a fitting half and a held-out half."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def as_interventions(site: Site, shift: np.ndarray) -> list[Intervention]:
    """The fitted shift as a dense `add` intervention, for `intervene` and generation."""
    width = len(shift)
    return shift_interventions(site.kind, np.full(width, site.layer), np.arange(width), shift)


def stage_config(cfg: RunConfig) -> dict[str, object]:
    return stage_sections(cfg, "bound", "behave")


def run_bound(run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    """Stage `bound`: per direction and layer, the fitted shared shift, fit and held out."""
    train, behave, record = (
        Stage(run_dir, "train"),
        Stage(run_dir, "behave"),
        Stage(run_dir, "record"),
    )
    stage = Stage(run_dir, "bound")
    config, inputs = stage_config(cfg), [train, behave, record]
    if stage.up_to_date(config, inputs, force):
        return stage
    bc = cfg.bound
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    depth = n_layers(model)
    layers = list(range(depth)) if bc.layers is None else bc.layers
    if bad := [layer for layer in layers if not 0 <= layer < depth]:
        raise MemgenError(f"bound.layers {bad} out of range: the model has layers 0..{depth - 1}")
    # The site's mean activation norm per layer puts each fitted shift's size in scale.
    _, mean_norm = activation_scale(read_record(record.path).activations(bc.site))
    steerer = Steerer(model, tokenizer, task, cfg)
    labelled = read_labelled(behave.path / "test_outputs.jsonl")
    out = stage.begin()
    rows: list[dict[str, Any]] = []
    shifts: dict[str, np.ndarray] = {}  # "direction/site.layer" -> the fitted vector
    for direction, (source, toward) in DIRECTIONS.items():
        prompts = [ex for ex, label in labelled if label == source][: bc.n_prompts]
        if len(prompts) < 2:
            log.warning(
                "bound: %d test prompts answered %r; %s skipped", len(prompts), source, direction
            )
            continue
        fit_rows, held_rows = split_half(len(prompts), cfg.seed)
        fitting, held_out = [prompts[i] for i in fit_rows], [prompts[i] for i in held_rows]
        for layer in tqdm(layers, desc=f"bound {direction}", disable=None):
            site = Site(bc.site, layer)
            shift, fit = fit_shift(
                model,
                tokenizer,
                fitting,
                site,
                toward,
                chat=cfg.train.chat,
                steps=bc.steps,
                lr=bc.lr,
                seed=cfg.seed,
            )
            shifts[f"{direction}/{site}"] = shift.astype(np.float32)
            shares = steerer.shares(held_out, as_interventions(site, shift))
            norm, scale = float(np.linalg.norm(shift)), float(mean_norm[layer])
            rows.append({
                "direction": direction, "site": site.kind, "layer": layer,
                "n_fit": len(fitting), "fit": fit,
                "n_held_out": len(held_out), "held_out": shares,
                "shift_norm": norm,
                "relative_norm": norm / scale if scale > 0 else float("inf"),
            })  # fmt: skip
            log.info(
                "bound: %s %s fit %.2f, held out %s (shift %.1fx the mean norm)",
                direction,
                site,
                fit,
                " ".join(f"{k} {v:.2f}" for k, v in shares.items()),
                rows[-1]["relative_norm"],
            )
    write_json(out / "bound.json", {"rows": rows})
    save_file(shifts, str(out / "shifts.safetensors"))
    stage.finish(config, inputs, cfg.seed, {"rows": rows})
    log.info("%s", format_bound(rows))
    return stage


def format_bound(rows: list[dict[str, Any]]) -> str:
    """`bound.json`'s rows as a plain-text table."""
    lines = ["direction   site     fit   held out: gen   mem  other   shift/norm"]
    for row in rows:
        held = row["held_out"]
        lines.append(
            f"{row['direction']:<11} {row['site']}.{row['layer']:<3} {row['fit']:5.2f}"
            f"            {held['gen']:5.2f} {held['mem']:5.2f} {held['other']:5.2f}"
            f"   {row['relative_norm']:9.2f}"
        )
    return "\n".join(lines)
