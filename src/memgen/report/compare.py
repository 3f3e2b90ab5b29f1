"""Compare finished runs: how much the headline numbers vary, and whether the neurons agree.

    memgen compare runs/color-seed0 runs/color-seed1 runs/color-seed2 --out runs/compare

One seed is one draw. For runs of the same task (seeds, configs) this tabulates each
run's headline numbers with their mean, standard deviation and 95% t-interval, so a
result comes with its spread. For each pair of runs it compares the behaviour
neurons, but index by index only where neuron j of layer l is the same unit in both
runs: the same trained weights, or LoRA adapters on the same base model (the paper's
inter-task question). Two models trained from scratch are a different matter: hidden
units are defined only up to a permutation, so index overlap would be meaningless.
For them, and for every pair, the layer profiles (the share of selected neurons per
layer) are compared instead.

A run stopped before its report (`memgen run --until behave`, as a recipe's seed x thread
table needs, or `--until steer`) takes part with what its finished stages hold.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memgen.core.artifacts import Stage, read_json, write_json
from memgen.core.errors import MemgenError
from memgen.core.neuron_set import read_scores
from memgen.core.recorded import Recorded, read_record
from memgen.core.rows import RunFigures, dump_rows
from memgen.core.stats import SHARE, summarise
from memgen.neurons.consistency import across_halves, compare_scores
from memgen.neurons.selection import layer_share, select_top
from memgen.probe.probes import accuracy, decision_scores, fit_probe, pair_ordering
from memgen.report.deletion_runs import deletion_across, format_deletion

# Headline numbers: name -> path into results.json (docs/results-schema.md).
METRICS: dict[str, str] = {
    "kept_step": "training.selected.step",
    "gen": "behaviour.test_rates.gen",
    "mem": "behaviour.test_rates.mem",
    "other": "behaviour.test_rates.other",
    "flip_rate": "pairs.flip_rate",
    "probe_best": "probe.best.accuracy",
    "mem_to_gen": "steering_best.mem_to_gen.targeted.gen",
    "mem_to_gen_control": "steering_best.mem_to_gen.controls.matched.rates.gen",
    "gen_to_mem": "steering_best.gen_to_mem.targeted.mem",
    "gen_to_mem_control": "steering_best.gen_to_mem.controls.matched.rates.mem",
    "split_half_spearman": "neurons.consistency.spearman",
}
# The range each metric's interval is clipped to: shares unless named here.
METRIC_BOUNDS: dict[str, tuple[float, float] | None] = {
    "kept_step": None,
    "split_half_spearman": (-1.0, 1.0),
}


@dataclass(frozen=True)
class FinishedRun:
    """What `compare` needs from one run folder."""

    name: str
    path: Path
    results: dict[str, Any]
    train_manifest: dict[str, Any]
    site: str
    top_n: list[float]
    score: np.ndarray  # [layers, width]; empty for a run stopped after behave
    nmd: np.ndarray  # [layers, width]

    @classmethod
    def load(cls, run_dir: Path, name: str) -> FinishedRun:
        if not (run_dir / "results.json").is_file():
            return cls.partial(run_dir, name)
        return cls.with_results(run_dir, name, read_json(run_dir / "results.json"))

    @classmethod
    def with_results(cls, run_dir: Path, name: str, results: dict[str, Any]) -> FinishedRun:
        scores = read_scores(Stage(run_dir, "neurons").path)
        neurons = Stage(run_dir, "neurons").manifest()["config"]["neurons"]
        return cls(
            name=name,
            path=run_dir,
            results=results,
            train_manifest=Stage(run_dir, "train").manifest(),
            site=str(neurons["site"]),
            top_n=[float(f) for f in neurons["top_n"]],
            score=scores["score"],
            nmd=scores["nmd"],
        )

    @classmethod
    def partial(cls, run_dir: Path, name: str) -> FinishedRun:
        """A run stopped before its report (`--until`): what its finished stages hold."""
        behave = Stage(run_dir, "behave")
        if not behave.is_finished():
            raise MemgenError(
                f"{run_dir} has not finished `behave`; run `memgen run --run-dir {run_dir}` "
                "(or `--until behave` to compare rates only)"
            )
        manifest, train = behave.manifest(), Stage(run_dir, "train").manifest()
        summary = manifest.get("summary", {})
        config = train.get("config", {})
        results: dict[str, Any] = {
            "task": config.get("task"),
            "seed": config.get("seed"),
            "model": config.get("train", {}).get("model"),
            "training": {"selected": train.get("summary", {}).get("best")},
            "behaviour": {"test_rates": summary.get("test_rates")},
            "pairs": summary.get("pairs"),
        }
        later = {"neurons": "neurons", "probe": "probe", "steer": "steering_best"}
        for stage_name, key in later.items():
            stage = Stage(run_dir, stage_name)
            if stage.is_finished():
                stage_summary = stage.manifest().get("summary", {})
                results[key] = stage_summary.get("best") if stage_name == "steer" else stage_summary
        if "neurons" in results:
            return cls.with_results(run_dir, name, results)
        empty = np.zeros((0, 0))
        return cls(name, run_dir, results, train, "", [], empty, empty)

    @property
    def has_neurons(self) -> bool:
        return self.score.size > 0

    @functools.cached_property
    def record(self) -> Recorded:
        """The run's recorded activations, read once however many pairs it is in."""
        return read_record(Stage(self.path, "record").path)

    @property
    def deletion(self) -> dict[str, Any] | None:
        """The delete stage's rows, read from the stage: it may have run after the report."""
        stage = Stage(self.path, "delete")
        if not stage.is_finished():
            return None
        summary: dict[str, Any] = stage.manifest().get("summary", {})
        return summary

    @property
    def task(self) -> str:
        return str(self.results.get("task"))

    def metric(self, path: str) -> float | None:
        value: Any = self.results
        for key in path.split("."):
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) else None

    def figures(self) -> RunFigures:
        """This run's headline numbers (`METRICS`), None where it lacks one."""
        values = {key: self.metric(path) for key, path in METRICS.items()}
        step = values.pop("kept_step")
        return RunFigures(
            run=self.name,
            task=self.task,
            seed=self.results.get("seed"),
            model=self.results.get("model"),
            kept_step=None if step is None else int(step),
            **values,
        )

    def layer_profile(self, fraction: float) -> np.ndarray:
        """Share of the top-`fraction` neurons that sit in each layer."""
        layers, _ = select_top(self.score, fraction)
        return layer_share(layers, self.score.shape[0])


def _model_weights(manifest: dict[str, Any]) -> dict[str, str]:
    outputs: dict[str, str] = manifest.get("outputs", {})
    return {k: v for k, v in outputs.items() if k.endswith(".safetensors")}


def correspondence(train_a: dict[str, Any], train_b: dict[str, Any]) -> str | None:
    """Why neuron (layer, j) is the same unit in both runs' models, or None if it is not."""
    weights_a, weights_b = _model_weights(train_a), _model_weights(train_b)
    if weights_a and weights_a == weights_b:
        return "same trained weights"
    base_a = train_a.get("config", {}).get("train", {}).get("model")
    base_b = train_b.get("config", {}).get("train", {}).get("model")
    if base_a == base_b and base_a not in (None, "scratch"):
        return f"fine-tuned from the same base ({base_a})"
    return None


def neuron_agreement(
    a: FinishedRun, b: FinishedRun, profiles: dict[str, dict[float, np.ndarray]]
) -> dict[str, Any]:
    """Index overlap where the neurons correspond; layer-profile distance always.

    `profiles` maps each run's name to its layer profile per top-N fraction.
    """
    row: dict[str, Any] = {"runs": [a.name, b.name]}
    fractions = [f for f in a.top_n if f in b.top_n]
    if a.site != b.site or a.score.shape != b.score.shape:
        row["comparable"] = False
        shapes = f"{a.site} {a.score.shape} vs {b.site} {b.score.shape}"
        row["why"] = f"different site or shape ({shapes}); compare runs recorded alike"
        return row
    # Total variation distance: the share of selected neurons that would have to move
    # to another layer to turn one profile into the other (0 = same, 1 = disjoint).
    row["layer_profile_distance"] = {
        f"{f:g}": 0.5 * float(np.abs(profiles[a.name][f] - profiles[b.name][f]).sum())
        for f in fractions
    }
    why = correspondence(a.train_manifest, b.train_manifest)
    row["comparable"] = True
    row["neurons_correspond"] = why is not None
    row["why"] = why or "trained separately: hidden units do not correspond index by index"
    if why is not None:
        row["cross_probe"] = cross_probes(a, b)
        row["overlap"] = {
            f"{f:g}": compare_scores(a.score, b.score, f, (a.nmd, b.nmd), per_layer_chance=True)
            for f in fractions
        }
        row["overlap_halves"] = overlap_halves(a, b, fractions)
    return row


def overlap_halves(a: FinishedRun, b: FinishedRun, fractions: Sequence[float]) -> dict[str, Any]:
    """The runs' overlap from half of each one's pairs, beside each run's own split-half
    overlap: is a neuron set as close to the other run's as to itself on other data?"""
    scorer = str(Stage(a.path, "neurons").manifest()["config"]["neurons"]["scorer"])
    data = [
        (run.record.activations(run.site), run.record.labels, run.record.pair_ids) for run in (a, b)
    ]
    found = across_halves(data[0], data[1], scorer, fractions)
    found["within"] = {  # each run's own split-half Jaccard, per top-N fraction
        run.name: {
            f"{row['top_n']:g}": row["jaccard"]
            for row in read_json(Stage(run.path, "neurons").path / "consistency.json")["top_n"]
        }
        for run in (a, b)
    }
    return found


def cross_probes(a: FinishedRun, b: FinishedRun) -> list[dict[str, Any]]:
    """Per layer: a probe fitted on all of one run's flipped pairs, tested on the other's.

    Both directions, at the neurons' site, with `a`'s classifier. Where units correspond
    this asks whether the two runs encode memorization vs generalization the same way
    (the paper's inter-task claim, read out rather than selected). Accuracy needs the
    probe's threshold to carry over too; `pairs` (the share of the other run's flipped
    pairs the probe orders rightly) asks only whether its direction does.
    """
    record_a, record_b = a.record, b.record
    x_a, x_b = record_a.activations(a.site), record_b.activations(b.site)
    classifier = str(Stage(a.path, "probe").manifest()["config"]["probe"]["classifier"])
    rows: list[dict[str, Any]] = []
    for layer in range(x_a.shape[1]):
        row: dict[str, Any] = {"layer": layer}
        for key, (x, y, x_test, y_test, pairs_test) in {
            "a_on_b": (x_a, record_a.labels, x_b, record_b.labels, record_b.pair_ids),
            "b_on_a": (x_b, record_b.labels, x_a, record_a.labels, record_a.pair_ids),
        }.items():
            probe = fit_probe(classifier, 0, np.asarray(x[:, layer], np.float32), y)
            features = np.asarray(x_test[:, layer], np.float32)
            row[key] = accuracy(probe.predict(features), y_test)
            row[key]["pairs"] = pair_ordering(decision_scores(probe, features), y_test, pairs_test)
        rows.append(row)
    return rows


def compare_runs(run_dirs: Sequence[Path], shared_units: bool = False) -> dict[str, Any]:
    """The comparison; `shared_units` refuses any pair whose neurons do not correspond."""
    if len(run_dirs) < 2:
        raise MemgenError("give at least two run folders to compare")
    names = [path.name for path in run_dirs]
    if len(set(names)) < len(names):
        names = [str(path) for path in run_dirs]
    runs = [FinishedRun.load(path, name) for path, name in zip(run_dirs, names, strict=True)]
    if shared_units:
        for run in runs:
            if not run.has_neurons:
                raise MemgenError(
                    f"{run.name} stopped after behave; --shared-units compares neurons: "
                    f"finish it with `memgen run --run-dir {run.path}`"
                )
        for a, b in itertools.combinations(runs, 2):
            if correspondence(a.train_manifest, b.train_manifest) is None or (
                a.site,
                a.score.shape,
            ) != (b.site, b.score.shape):
                raise MemgenError(
                    f"{a.name} and {b.name} do not share units (trained separately, or "
                    "recorded at another site); --shared-units compares runs of one model: "
                    "the same trained weights, or adapters on one base (train.model)"
                )
    per_run = [run.figures() for run in runs]
    summary: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(run.task for run in runs):
        rows = [vars(row) for row in per_run if row.task == task]
        summary[task] = {
            key: summarise(values, METRIC_BOUNDS.get(key, SHARE))
            for key in METRICS
            if (values := [row[key] for row in rows if row[key] is not None])
        }
    cross: list[dict[str, Any]] = []
    if shared_units:
        from memgen.report.cross import cross_steering

        cross = cross_steering([(run.name, run.path) for run in runs])
    with_neurons = [run for run in runs if run.has_neurons]
    profiles = {run.name: {f: run.layer_profile(f) for f in run.top_n} for run in with_neurons}
    pairs = [neuron_agreement(a, b, profiles) for a, b in itertools.combinations(with_neurons, 2)]
    layer_profiles = {
        name: {f"{f:g}": shares.tolist() for f, shares in by_fraction.items()}
        for name, by_fraction in profiles.items()
    }
    return {
        "runs": dump_rows(per_run),
        "summary": summary,
        "neurons": pairs,
        "layer_profiles": layer_profiles,
        "cross_steering": cross,
        "deletion": deletion_across([(run.name, run.task, run.deletion) for run in runs]),
    }


def _seed_table(comparison: dict[str, Any]) -> list[str]:
    """One line per run, then mean, 95% CI half-width and range per task."""
    columns = ["gen", "mem", "other", "flip_rate", "probe_best", "mem_to_gen", "gen_to_mem"]
    labels = [row["run"] for row in comparison["runs"]] + ["95% CI half-width"]
    width = max(len(label) for label in labels + [f"mean ({t})" for t in comparison["summary"]]) + 2

    def cell(value: float | None) -> str:
        return f"{100 * value:>11.1f}" if value is not None else f"{'-':>11}"

    lines = ["run".ljust(width) + "".join(f"{c:>11}" for c in columns)]
    for row in comparison["runs"]:
        lines.append(row["run"].ljust(width) + "".join(cell(row[c]) for c in columns))
    for task, table in comparison["summary"].items():
        means = [cell(table[c]["mean"] if c in table else None) for c in columns]
        lines.append(f"mean ({task})".ljust(width) + "".join(means))
        spread, ranges = [], []
        for c in columns:
            entry = table.get(c, {})
            low, high = entry.get("ci_low"), entry.get("ci_high")
            text = f"±{50 * (high - low):.1f}" if low is not None and high is not None else "-"
            spread.append(f"{text:>11}")
            text = f"{100 * entry['min']:.0f}-{100 * entry['max']:.0f}" if entry else "-"
            ranges.append(f"{text:>11}")
        lines.append("95% CI half-width".ljust(width) + "".join(spread))
        lines.append("range".ljust(width) + "".join(ranges))
    return lines


def _pair_lines(pair: dict[str, Any]) -> list[str]:
    """What two runs' behaviour neurons share, when their units correspond."""
    head = f"{pair['runs'][0]} vs {pair['runs'][1]}: "
    if not pair["comparable"]:
        return [head + pair["why"]]
    parts = [
        f"layer-profile distance {v:.2f} (top {float(k):.0%})"
        for k, v in pair["layer_profile_distance"].items()
    ]
    for key, overlap in pair.get("overlap", {}).items():
        parts.append(
            f"top {float(key):.0%} Jaccard {overlap['jaccard']:.2f} "
            f"(chance {overlap['chance_jaccard']:.3f}; with the same per-layer counts "
            f"{overlap['chance_jaccard_layers']:.3f}), Spearman {overlap['spearman']:.2f}, "
            f"NMD signs agree on {overlap['sign_agreement']:.0%} of {overlap['n_shared']} "
            "shared"
        )
    lines = [head + "; ".join(parts) + f" [{pair['why']}]"]
    halves: dict[str, Any] = pair.get("overlap_halves") or {"top_n": [], "within": {}}
    for row in halves["top_n"]:
        key, jac = f"{row['top_n']:g}", row["jaccard"]
        within = ", ".join(
            f"{name} {by_n[key]['mean']:.2f}"
            for name, by_n in halves["within"].items()
            if key in by_n
        )
        lines.append(
            f"  top {row['top_n']:.0%} from half the pairs: Jaccard across runs "
            f"{jac['mean']:.2f} [{jac['ci_low']:.2f}, {jac['ci_high']:.2f}] (chance "
            f"{row['jaccard_chance']:.3f}); within each run: {within}"
        )
    for row in pair.get("cross_probe", []):
        lines.append(
            f"  layer {row['layer']} probe across runs: {pair['runs'][0]} -> "
            f"{pair['runs'][1]} {row['a_on_b']['accuracy']:.1%} (pairs ordered "
            f"{row['a_on_b']['pairs']['share']:.1%}), reverse "
            f"{row['b_on_a']['accuracy']:.1%} ({row['b_on_a']['pairs']['share']:.1%})"
        )
    return lines


def format_table(comparison: dict[str, Any]) -> str:
    """A plain-text table: one line per run, then mean and 95% CI per task; then what the
    runs' neurons share and how steering carries from one run to another."""
    lines = [*_seed_table(comparison), ""]
    for pair in comparison["neurons"]:
        lines += _pair_lines(pair)
    for row in comparison.get("cross_steering", []):
        toward = "gen" if row["direction"] == "mem_to_gen" else "mem"
        control = row["control"]["target"]["mean"]
        lines.append(
            f"steering {row['direction']} chosen on {row['from']}, applied to {row['to']}: "
            f"{row['targeted'][toward]:.1%} of {row['n_prompts']} (random directions "
            f"{control:.1%})"
        )
    lines += format_deletion(comparison["deletion"])
    return "\n".join(lines)


def write_comparison(
    run_dirs: Sequence[Path], out: Path, shared_units: bool = False
) -> dict[str, Any]:
    """compare.json, compare.txt and compare.png in `out`."""
    from memgen.report.compare_figure import (
        plot_comparison,
        plot_cross_steering,
        plot_neuron_agreement,
    )

    comparison = compare_runs(run_dirs, shared_units)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", comparison)
    (out / "compare.txt").write_text(format_table(comparison) + "\n")
    plot_comparison(comparison, out / "compare.png")
    if any(pair.get("neurons_correspond") for pair in comparison["neurons"]):
        plot_neuron_agreement(comparison, out / "neuron_agreement.png")
    if comparison["cross_steering"]:
        plot_cross_steering(comparison["cross_steering"], out / "cross_steering.png")
    return comparison
