"""Stage `steer`: transition tables for steering mem -> gen and gen -> mem, with controls.

    memgen steer --run-dir runs/color-seed0 steer.alphas=[1,3,5]

For each neuron set of the `neurons` stage (top-N%) and each alpha, the test
prompts the unsteered model answered by memory are steered toward generalization
(and vice versa); the table gives the share that become gen / mem / other, for the
targeted intervention and for each control. A side-effect check measures accuracy
on training prompts (answered as trained?) under the same steering.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.behave.evaluate import label_examples
from memgen.core.artifacts import Stage, write_json
from memgen.core.config import RunConfig, set_name, stage_sections
from memgen.core.hooks import Intervention, intervene
from memgen.core.modeling import load_run_model
from memgen.core.neuron_set import NeuronSet
from memgen.core.recorded import read_record
from memgen.core.stats import rates
from memgen.steering.api import Direction, steering_interventions
from memgen.steering.controls import control_interventions
from memgen.steering.figures import plot_steering
from memgen.tasks.base import Example, Task, make_task, read_jsonl

log = logging.getLogger(__name__)
# direction -> (behaviour of the prompts steered, behaviour steered toward)
DIRECTIONS: dict[str, tuple[str, Direction]] = {
    "mem_to_gen": ("mem", "gen"),
    "gen_to_mem": ("gen", "mem"),
}


def stage_config(cfg: RunConfig) -> dict[str, object]:
    return stage_sections(cfg, "steer", "behave")


def read_labelled(path: Path) -> list[tuple[Example, str]]:
    with path.open() as handle:
        rows = [json.loads(line) for line in handle]
    return [(Example.from_dict(row["example"]), row["label"]) for row in rows]


class Steerer:
    """Generates and labels answers under a list of interventions."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, cfg: RunConfig
    ) -> None:
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.chat = cfg.train.chat

    def shares(
        self, examples: Sequence[Example], interventions: list[Intervention]
    ) -> dict[str, float]:
        with intervene(self.model, interventions):
            labelled = label_examples(
                self.model, self.tokenizer, self.task, examples, self.cfg.behave, chat=self.chat
            )
        return rates(row.label for row in labelled)

    def accuracy(self, examples: Sequence[Example], interventions: list[Intervention]) -> float:
        """Share of training prompts still answered with the behaviour they were taught.

        A triggered math or cipher prompt answered by the rule is a miss: that is the
        damage steering toward gen can do.
        """
        with intervene(self.model, interventions):
            labelled = label_examples(
                self.model, self.tokenizer, self.task, examples, self.cfg.behave, chat=self.chat
            )
        taught = [self.task.label(ex, ex.completion) for ex in examples]
        hits = [row.label == want != "other" for row, want in zip(labelled, taught, strict=True)]
        return float(np.mean(hits)) if hits else float("nan")


def activation_scale(activations: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron standard deviation [L, W] and mean vector norm per layer [L], in chunks.

    `activations` is the record stage's [N, L, W] memory map; chunks keep a large model's
    recording from being copied into memory at once.
    """
    n = activations.shape[0]
    total = np.zeros(activations.shape[1:])
    squares = np.zeros(activations.shape[1:])
    norms = np.zeros(activations.shape[1])
    for start in range(0, n, chunk):
        x = np.asarray(activations[start : start + chunk], dtype=np.float64)
        total += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
        norms += np.linalg.norm(x, axis=2).sum(axis=0)
    mean = total / n
    sd = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
    return sd, norms / n


def shift_size(
    neuron_set: NeuronSet, alpha: float, sd: np.ndarray, mean_norm: np.ndarray
) -> dict[str, float]:
    """How hard alpha x NMD pushes, against the recorded activations' spread and size.

    `sd`: the median selected neuron's shift in units of its own standard deviation.
    `relative_norm`: the largest, over layers, of the shift vector's norm over the mean
    norm of that layer's activation vector. The same alpha can be a nudge for one model
    and a shove that breaks another; these two numbers say which.
    """
    layers, neurons = np.asarray(neuron_set.layers), np.asarray(neuron_set.neurons)
    shifts = alpha * np.abs(np.asarray(neuron_set.nmd, dtype=np.float64))
    spread = sd[layers, neurons]
    in_sd = np.divide(shifts, spread, out=np.full_like(shifts, np.inf), where=spread > 0)
    relative = [
        float(np.linalg.norm(shifts[layers == layer]) / mean_norm[layer])
        for layer in np.unique(layers)
        if mean_norm[layer] > 0
    ]
    return {"sd": float(np.median(in_sd)), "relative_norm": max(relative, default=0.0)}


def best_settings(rows: list[dict[str, Any]], max_other: float = 0.10) -> dict[str, dict[str, Any]]:
    """Per direction: the setting with the largest target share among those with few 'other'."""
    best: dict[str, dict[str, Any]] = {}
    for direction, (_, target) in DIRECTIONS.items():
        candidates = [r for r in rows if r["direction"] == direction]
        clean = [r for r in candidates if r["targeted"]["other"] <= max_other] or candidates
        if clean:
            best[direction] = max(clean, key=lambda r: (r["targeted"][target], -r["alpha"]))
    return best


def run_steer(run_dir: Path, cfg: RunConfig, force: bool = False, progress: bool = True) -> Stage:
    data, train = Stage(run_dir, "data"), Stage(run_dir, "train")
    behave, neurons = Stage(run_dir, "behave"), Stage(run_dir, "neurons")
    record, stage = Stage(run_dir, "record"), Stage(run_dir, "steer")
    config = stage_config(cfg)
    inputs = [data, train, behave, record, neurons]
    if stage.up_to_date(config, inputs, force):
        return stage
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    steerer = Steerer(model, tokenizer, task, cfg)
    labelled = read_labelled(behave.path / "test_outputs.jsonl")
    scores = load_file(str(neurons.path / "scores.safetensors"))
    nmd, score = scores["nmd"], scores["score"]
    recorded = read_record(record.path)
    scales: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # site -> (sd, mean norm)
    # Side effects: does steering break what the model was trained to do?
    trained = read_jsonl(data.path / "train.jsonl")[: cfg.steer.n_side_effect]
    out = stage.begin()
    rng = np.random.default_rng(cfg.seed)
    baseline_accuracy = steerer.accuracy(trained, []) if trained else None
    rows: list[dict[str, Any]] = []
    settings = [(f, a) for f in cfg.neurons.top_n for a in cfg.steer.alphas]
    bar = tqdm(
        total=len(settings) * len(DIRECTIONS), desc="steer", disable=None if progress else True
    )
    for direction, (source, toward) in DIRECTIONS.items():
        prompts = [ex for ex, label in labelled if label == source][: cfg.steer.n_prompts]
        if not prompts:
            log.warning("steer: no test prompt answered %r; %s skipped", source, direction)
            bar.update(len(settings))
            continue
        for fraction, alpha in settings:
            neuron_set = NeuronSet.load(neurons.path / set_name(fraction))
            neuron_set.check_compatible(model)
            if neuron_set.site not in scales:
                scales[neuron_set.site] = activation_scale(recorded.activations(neuron_set.site))
            targeted = steering_interventions(neuron_set, alpha, toward)  # type: ignore[arg-type]
            controls = {
                kind: steerer.shares(
                    prompts, control_interventions(kind, neuron_set, nmd, score, alpha, toward, rng)
                )  # type: ignore[arg-type]
                for kind in cfg.steer.controls
            }
            row: dict[str, Any] = {
                "direction": direction,
                "top_n": fraction,
                "alpha": alpha,
                "n_prompts": len(prompts),
                "n_neurons": len(neuron_set.nmd),
                "shift": shift_size(neuron_set, alpha, *scales[neuron_set.site]),
                "targeted": steerer.shares(prompts, targeted),
                "control": next(iter(controls.values()), None),
                "controls": controls,
            }
            if trained:
                row["side_effect"] = {
                    "train_accuracy": steerer.accuracy(trained, targeted),
                    "baseline": baseline_accuracy,
                }
            rows.append(row)
            bar.update(1)
    bar.close()
    best = best_settings(rows)
    write_json(out / "steering.json", {"rows": rows, "best": best})
    plot_steering(rows, out / "steering.png")
    stage.finish(config, inputs, cfg.seed, {"rows": rows, "best": best})
    for direction, row in best.items():
        log.info(
            "steer: best %s top_n=%s alpha=%s -> %s (control %s)",
            direction,
            row["top_n"],
            row["alpha"],
            row["targeted"],
            row["control"],
        )
    return stage
