"""A self-contained HTML report: key numbers first, then one section per finding.

Figures are embedded as base64 PNG, so the file opens offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from memgen.core.rows import (
    BoundRow,
    DeletionRow,
    MemoryMatrix,
    ProbeLayer,
    SpecificityRow,
    SteeringRow,
    read_row,
    read_rows,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;
margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1040px;margin:0 auto;padding:28px 22px 60px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:6px}
.sub{color:#5b6475;margin:0 0 22px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e2e5eb;border-radius:10px;padding:14px 16px}
.card .k{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#6b7385}
.card .v{font-size:26px;font-weight:650;margin:4px 0}
.card .n{font-size:13px;color:#5b6475}
.ok{color:#127a52}
.bad{color:#b4232c}
figure{background:#fff;border:1px solid #e2e5eb;border-radius:10px;
margin:12px 0;padding:10px;text-align:center}
figure img{max-width:100%}
figcaption{font-size:13px;color:#5b6475;margin-top:6px;text-align:left}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%;margin:10px 0}
th,td{border:1px solid #e2e5eb;padding:5px 8px;text-align:right}
th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}
p.note{font-size:14px;line-height:1.5;max-width:860px}
"""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _figure(path: Path | None, caption: str) -> str:
    if path is None or not path.is_file():
        return ""
    return f"<figure>{_image(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _steering_row(r: SteeringRow) -> list[str]:
    target, control, side = r.toward, r.controls.matched, r.side_effect
    matched, draws = control.target, len(control.target_per_draw)
    low, high = r.ci[target]
    paper = [
        _pct(rates.get(target) if rates else None)
        for rates in (r.controls.random, r.controls.low_correlation)
    ]
    return [
        r.direction.replace("_", " "),
        r.method,
        f"{r.selection}, {r.size:g}, {r.position}",
        f"{r.shift.sd:.2f}",
        str(r.n_prompts),
        f"{_pct(r.targeted[target])} ({_pct(low)}–{_pct(high)})",
        _pct(r.targeted["other"]),
        f"{_pct(matched.mean)} ({_pct(matched.ci_low)}–{_pct(matched.ci_high)})",
        f"{control.p_value:.2f} ({draws} draws)",
        *paper,
        _pct(side.retention),
        f"{side.kl:.3f}",
        _pct(r.tuning.rates[target]),
    ]


def _steering_table(rows: list[SteeringRow]) -> str:
    header = [
        "direction",
        "method",
        "setting (chosen on tuning)",
        "shift (sd)",
        "n held out",
        "→target (95% CI)",
        "→other",
        "matched control (CI)",
        "rank p",
        "random",
        "low-corr.",
        "retention",
        "KL",
        "tuning →target",
    ]
    return _table(header, [_steering_row(r) for r in rows])


def _probe_table(per_layer: list[ProbeLayer]) -> str:
    rows = [
        [r.site, str(r.layer), _pct(r.accuracy), f"{_pct(r.ci_low)} – {_pct(r.ci_high)}"]
        for r in per_layer
    ]
    return _table(["site", "layer", "accuracy", "95% CI"], rows)


def _bound_table(rows: list[BoundRow]) -> str:
    header = [
        "direction",
        "site",
        "fit (in-sample)",
        "held out →gen",
        "held out →mem",
        "held out →other",
        "shift / ‖h‖",
    ]
    cells = [
        [
            r.direction.replace("_", " "),
            f"{r.site}.{r.layer}",
            _pct(r.fit),
            _pct(r.held_out["gen"]),
            _pct(r.held_out["mem"]),
            _pct(r.held_out["other"]),
            f"{r.relative_norm:.2f}",
        ]
        for r in rows
    ]
    return _table(header, cells)


def _localization_table(result: dict[str, Any]) -> str:
    header = [
        "selector",
        "k",
        "recall@k",
        "facts kept",
        "ordinary kept",
        "random: facts kept (mean, range)",
        "random: ordinary kept (mean, range)",
        "p (Holm)",
        "p net of collateral (Holm)",
    ]
    cells = []
    for r in result["rows"]:
        # localize.json before 2026-12-05 kept no random collateral and no net p-value,
        # and before 2026-12-06 no Holm-adjusted ones.
        net = r.get("p_value_net")
        cells.append(
            [
                r["selector"],
                str(r["k"]),
                "–" if r["recall_at_k"] is None else f"{r['recall_at_k']:.2f}",
                _pct(r["deletion"]["facts_recalled"]),
                _pct(r["deletion"]["ordinary_kept"]),
                _pct_spread(r["random_recalled"]),
                _pct_spread(r.get("random_ordinary_kept", [])),
                _p_and_holm(r["p_value"], r.get("p_value_holm")),
                "–" if net is None else _p_and_holm(net, r.get("p_value_net_holm")),
            ]
        )
    return _table(header, cells)


def _p_and_holm(p: float, adjusted: float | None) -> str:
    return f"{p:.3f}" if adjusted is None else f"{p:.3f} ({adjusted:.3f})"


def _pct_spread(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{_pct(sum(values) / len(values))} ({_pct(min(values))} – {_pct(max(values))})"


def _deletion_table(rows: list[DeletionRow]) -> str:
    header = [
        "scorer",
        "ablation",
        "k",
        "memory kept",
        "→ rule",
        "rule kept",
        "training kept",
        "random: memory kept (mean, range)",
        "p",
        "p net of collateral",
        "p rule lost",
    ]
    cells = [
        [
            r.scorer,
            r.ablation,
            str(r.k),
            f"{_pct(r.deleted.mem_kept)} [{_pct(r.mem_kept_ci[0])}, {_pct(r.mem_kept_ci[1])}], "
            f"n={r.n_mem}",
            _pct(r.deleted.to_rule),
            _pct(r.deleted.gen_kept),
            _pct(r.deleted.train_kept),
            f"{_pct(r.random_mem_kept.mean)} ({_pct(r.random_mem_kept.min)} – "
            f"{_pct(r.random_mem_kept.max)})",
            f"{r.p_value:.3f}",
            f"{r.p_value_net:.3f}",
            f"{r.p_value_rule:.3f}",
        ]
        for r in rows
    ]
    return _table(header, cells)


def _matrix_table(matrices: list[MemoryMatrix]) -> str:
    header = [
        "scorer",
        "ablation",
        "memories",
        "own memory kept",
        "others kept",
        "own memory lost most (chance)",
        "p (relabelled)",
    ]
    cells = [
        [
            m.scorer,
            m.ablation,
            str(len(m.memories)),
            _pct(m.diagonal),
            _pct(m.off_diagonal),
            f"{_pct(m.own_most)} ({_pct(m.chance)})",
            f"{m.p_value:.4f}",
        ]
        for m in matrices
    ]
    return _table(header, cells)


def _deletion_section(number: int, deletion: dict[str, Any], figure: Path | None) -> list[str]:
    rows = read_rows(DeletionRow, deletion["rows"], "results.json deletion")
    matrices = read_rows(MemoryMatrix, deletion["matrices"], "results.json deletion")
    held = deletion["held_out"]
    section = [
        f"<h2>{number}. Does deleting the selected neurons delete the memory? "
        "(<code>memgen delete</code>)</h2>",
        f'<p class="note">Each scorer\'s top MLP neurons, chosen on the flipped pairs, set '
        "to their training-prompt mean (or zero) at every position; then the held-out test "
        f"prompts answered again: {held['mem']} answered by memory, {held['gen']} by rule, "
        f"and {held['train']} training prompts. Random sets get the same deletion with the "
        "same count per layer; p is the selection's rank among them (net: memory lost "
        "minus rule answers lost).</p>",
        _figure(
            figure,
            "Memorized and rule answers kept over set size (mean ablation); "
            "bands: the matched random sets, least to most kept.",
        ),
        _deletion_table(rows),
    ]
    if matrices:
        section += [
            '<p class="note">Per memory: neurons chosen on one memory\'s pairs alone, deleted, '
            "and every memory measured. p: the own-memory diagonal among relabellings.</p>",
            _matrix_table(matrices),
        ]
    return section


def _optional_sections(results: dict[str, Any], figures: dict[str, Path]) -> list[str]:
    """Sections for the stages `memgen run` leaves out, when they have been run."""
    sections: list[str] = []
    number = 5  # after the four sections every run has
    if "bound" in results:
        sections += [
            f"<h2>{number}. How far could a shared shift steer? (<code>memgen bound</code>)</h2>",
            '<p class="note">Per layer, one vector fitted by gradient descent (weights frozen) '
            "on half the prompts of each behaviour, then added at the last position while "
            "generating the other half. NMD steering adds one such vector, so this bounds it.</p>",
            _bound_table(read_rows(BoundRow, results["bound"], "results.json bound")),
        ]
        number += 1
    if "ablation" in results:
        sections += [
            f"<h2>{number}. Where is the answer computed? (<code>memgen ablate</code>)</h2>",
            '<p class="note">Each layer\'s attention output or MLP neurons multiplied by the '
            "scale, and the test prompts answered by memory, and by rule, generated again. "
            "Dark cells are components the answer depends on.</p>",
            _figure(figures.get("ablation"), "Share of answers changed, per site and layer."),
        ]
        number += 1
    if "localization" in results:
        planted = results["localization"]["planted"]
        sections += [
            f"<h2>{number}. Can a selector find a planted memory? (<code>memgen localize"
            "</code>)</h2>",
            f'<p class="note">{planted["n_recalled"]} new facts trained into '
            f"{planted['n_neurons']} random MLP neurons ({planted['per_layer']} per layer) and "
            "nowhere else. Each selector's top k set to their usual values at every position: "
            "the facts still recalled, the ordinary training answers kept, and the same for "
            "random sets with the same per-layer counts (p: the rank of the selection among "
            "them). The first row deletes the planted neurons themselves.</p>",
            _localization_table(results["localization"]),
        ]
        number += 1
    if "deletion" in results:
        sections += _deletion_section(number, results["deletion"], figures.get("deletion"))
    return sections


def _with_ci(rate: float | None, low: float | None, high: float | None, n: int) -> str:
    return f"{_pct(rate)} [{_pct(low)}, {_pct(high)}], n={n}"


def _paper_verdict(rate: float | None, high: float | None, paper: float) -> str:
    """Reproduced when the paper's figure is within this run's 95% interval, or below it."""
    if rate is None:
        return "not measured"
    return "reproduced" if (high if high is not None else rate) >= paper else "not reproduced"


def _steering_verdicts(steering: list[SteeringRow]) -> list[list[str]]:
    rows = []
    papers = {"mem_to_gen": 0.837, "gen_to_mem": 0.899}
    for method in ("nmd", "fitted"):
        for r in (r for r in steering if r.method == method):
            toward = r.toward
            low, high = r.ci[toward]
            figure = (
                f"{_with_ci(r.targeted[toward], low, high, r.n_prompts)}; "
                f"matched random {_pct(r.controls.matched.target.mean)}"
            )
            arrow = r.direction.replace("_to_", " → ")
            if method == "nmd":
                paper = papers[r.direction]
                rows.append(
                    [
                        f"steering by alpha × NMD, {arrow}",
                        _pct(paper),
                        figure,
                        _paper_verdict(r.targeted[toward], high, paper),
                    ]
                )
            else:
                beats = "beats" if r.beats_matched else "does not beat"
                rows.append(
                    [
                        f"added: fitted shift (the ceiling), {arrow}",
                        "–",
                        figure,
                        f"the selection {beats} matched random neurons",
                    ]
                )
    return rows


def verdict_rows(results: dict[str, Any]) -> list[list[str]]:
    """This run's figure beside the paper's, claim by claim: [claim, paper, run, verdict]."""
    pairs = results["pairs"]
    probe = read_row(ProbeLayer, results["probe"]["best"], "results.json probe.best")
    low, high = pairs.get("flip_rate_ci") or (None, None)
    rows = [
        [
            "flipped pairs (twin prompts answered one mem, one gen)",
            "8-11% of pairs",
            _with_ci(pairs.get("flip_rate"), low, high, pairs["evaluated"]),
            "present" if pairs["flipped"] else "none found",
        ],
        [
            f"behaviour predicted from activations (best: {probe.site} layer {probe.layer})",
            "> 92%",
            _with_ci(probe.accuracy, probe.ci_low, probe.ci_high, probe.n),
            _paper_verdict(probe.accuracy, probe.ci_high, 0.92),
        ],
    ]
    steering = read_rows(SteeringRow, results["steering"], "results.json")
    specificity = read_rows(SpecificityRow, results["specificity"], "results.json")
    return rows + _steering_verdicts(steering) + _specificity_verdicts(specificity)


def _special(ahead: int, cells: int, draws: int) -> str:
    if draws < 19:  # a rank p-value cannot go below 1 / (draws + 1)
        return f"cannot say: {draws} draws allow p >= {1 / (draws + 1):.2f} (specificity.draws=19)"
    return f"special in {ahead} of {cells} cells (p = {1 / (draws + 1):.2f} each, uncorrected)"


def _at_floor(p_value: float | None, draws: int) -> bool:
    """No draw as large: a rank p-value at its floor, 1 / (draws + 1)."""
    return p_value is not None and p_value * (1 + draws) < 1.5


def _specificity_verdicts(rows: list[SpecificityRow]) -> list[list[str]]:
    """Per scorer: in how many cells its top set moved more than every matched random set."""
    verdicts = []
    for scorer in sorted({r.scorer for r in rows}):
        cells = [r for r in rows if r.scorer == scorer]
        ahead = [r for r in cells if _at_floor(r.p_value, len(r.matched_per_draw))]
        draws = min(len(r.matched_per_draw) for r in cells)
        claim = f"selected neurons ({scorer}) are special: steer more than matched random ones"
        run = f"ahead of every random set in {len(ahead)} of {len(cells)} cells"
        verdicts.append(
            [
                claim,
                "not tested (its control is not matched)",
                run,
                _special(len(ahead), len(cells), draws),
            ]
        )
        at_kl = [r for r in cells if r.p_value_margin_at_kl is not None]
        if at_kl:  # files from before 2026-12-06 lack it
            ahead = [r for r in at_kl if _at_floor(r.p_value_margin_at_kl, len(r.matched_per_draw))]
            verdicts.append(
                [
                    f"... at equal collateral ({scorer}): move the answer's logit gap further "
                    "than random sets scaled to the same next-token KL",
                    "not tested",
                    f"ahead of every scaled random set in {len(ahead)} of {len(at_kl)} cells",
                    _special(len(ahead), len(at_kl), draws),
                ]
            )
    return verdicts


def render(results: dict[str, Any], figures: dict[str, Path]) -> str:
    rates = results["behaviour"]["test_rates"]
    verdicts = _table(
        ["claim", "the paper", "this run (held out, 95% CI)", "verdict"], verdict_rows(results)
    )
    overview = (
        f'<p class="note">Test prompts (memory and rule disagree): {_pct(rates["gen"])} gen, '
        f"{_pct(rates['mem'])} mem, {_pct(rates['other'])} other. Verdicts are for this run "
        "only; across seeds see <code>memgen compare</code>.</p>"
    )
    title = f"memgen · {results['task']} · {results['model']} · seed {results['seed']}"
    sections = [
        "<h2>1. Training: both behaviours emerge</h2>",
        '<p class="note">Share of dev prompts (memory and rule disagree; none is a test '
        "prompt) answered by the rule (gen), by recall (mem) or otherwise, during training. "
        "The dashed line is the kept checkpoint, chosen on these dev rates.</p>",
        _figure(figures.get("curve"), "Behaviour on dev prompts vs training step."),
        "<h2>2. Where the behaviours differ: neurons</h2>",
        '<p class="note">NMD = mean activation on memorized minus generalized members of '
        "flipped pairs, per neuron, sorted within each layer. Positive neurons lean memorization, "
        "negative ones generalization.</p>",
        _figure(figures.get("nmd"), "Sorted NMD per layer."),
        _figure(
            figures.get("share"),
            "Share of the selected (top-N% by |correlation|) neurons per layer.",
        ),
        "<h2>3. Predicting the behaviour</h2>",
        _figure(
            figures.get("probe"),
            "Held-out accuracy per layer (pairs never split across folds). Dotted: the answer "
            "readout, which fits nothing: the logit lens compares each prompt's two answers, and "
            "the mem member should score higher; at the last layer it is 100% by construction.",
        ),
        _figure(figures.get("learning_curve"), "Accuracy at the best layer vs number of pairs."),
        _probe_table(read_rows(ProbeLayer, results["probe"]["per_layer"], "results.json")),
        "<h2>4. Steering</h2>",
        '<p class="note">Prompts the unsteered model answered by memory, steered toward '
        "generalization, and the reverse. Each method's setting was chosen on a tuning half of "
        "those prompts; every rate here is on the other, held-out half. The matched control "
        "gives the same treatment to as many random neurons per layer (or a random direction), "
        "over several draws; retention is the share of training prompts, already answered with "
        "the target behaviour, whose answer steering leaves unchanged.</p>",
        _figure(figures.get("steering"), "Held-out shares under each method's chosen steering."),
        _steering_table(read_rows(SteeringRow, results["steering"], "results.json")),
        '<p class="note">Specificity: the fitted method on the top-N% neurons (solid) against '
        "as many random neurons per layer fitted the same way (dashed, mean over draws), at "
        "the same budget, over set size; held-out prompts. Where the lines meet, the "
        "selection does not matter.</p>",
        _figure(figures.get("specificity"), "Targeted vs matched random, over set size."),
        *_optional_sections(results, figures),
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><main><h1>{html.escape(title)}</h1>"
        f'<p class="sub">Neuron-level differentiation of memorization and generalization '
        f"(arXiv 2412.18497), tested with memgen.</p>{verdicts}{overview}"
        f"{''.join(sections)}</main></body></html>"
    )
