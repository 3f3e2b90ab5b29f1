"""Where is the behaviour computed? Knock out (or scale) one site at one layer.

    memgen ablate --run-dir runs/color-seed0
    memgen ablate --run-dir runs/color-seed0 'ablate.scales=[0,0.5,2]' ablate.position=last

Steering asks whether a shift moves the behaviour; ablation asks which components
the answer depends on at all. For each site kind (attention output, MLP hidden
neurons) and layer, every unit of the site is multiplied by each scale (0 knocks the
component out), at every position (default) or at the last only, while the test prompts
the model answered by memory, and those it answered by rule, are generated again.
A component the behaviour needs shows up as answers that change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memgen.core.artifacts import Step, write_json
from memgen.core.config import AblateConfig, RunConfig
from memgen.core.errors import MemgenError
from memgen.core.examples import Example, read_test_answers
from memgen.core.hooks import Intervention, Position, intervene
from memgen.core.modeling import load_run_model
from memgen.core.pieces import Pieces
from memgen.core.progress import progress
from memgen.core.reading import label_examples
from memgen.core.rows import AblationRow, dump_rows
from memgen.core.sites import Site, n_layers, site_width
from memgen.core.stats import rates
from memgen.tasks.base import Task, make_task

log = logging.getLogger(__name__)
SOURCES = ("mem", "gen")  # the unablated answer's behaviour


def scale_site(site: Site, width: int, scale: float, position: Position) -> list[Intervention]:
    """Every unit of `site` multiplied by `scale`."""
    return [
        Intervention(
            site=site,
            neurons=tuple(range(width)),
            op="scale",
            values=(scale,),
            position=position,  # type: ignore[arg-type]
        )
    ]


class Steerer:
    """Generates and labels answers under a list of interventions (`memgen ablate`)."""

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


def run_ablate(step: Step) -> None:
    """Stage `ablate`: the behaviour of mem and gen prompts with one site scaled."""
    cfg, stage = step.cfg, step.stage
    train, behave = (step.inputs["train"], step.inputs["behave"])
    ac = cfg.ablate
    task = make_task(cfg.task, cfg.data.options)
    model, tokenizer = load_run_model(train.path, cfg.train, cfg.device)
    steerer = Steerer(model, tokenizer, task, cfg)
    labelled = read_test_answers(behave.path)
    prompts = {
        source: [ex for ex, label in labelled if label == source][: ac.n_prompts]
        for source in SOURCES
    }
    for source in SOURCES:
        if not prompts[source]:
            log.warning("ablate: no test prompt was answered %r; nothing to ablate there", source)
    if not any(prompts.values()):
        raise MemgenError(
            "ablate: the model answered no test prompt by memory or by rule; "
            "train it further (`memgen train`) before ablating"
        )
    out = stage.begin()
    # The same prompts, batched the same way, with nothing changed: the floor of "changed".
    baseline = {
        source: steerer.shares(examples, []) for source, examples in prompts.items() if examples
    }
    pieces = Pieces(out / "pieces", step)
    found = _knockouts(steerer, prompts, ac, pieces)
    rows = dump_rows(found)
    result = {"baseline": baseline, "rows": rows}
    write_json(out / "ablate.json", result)
    plot_ablation(rows, out / "ablate.png")
    pieces.clear()
    step.finish(result)
    log.info("%s", format_ablation(baseline, rows))


def _knockouts(
    steerer: Steerer, prompts: dict[str, list[Example]], ac: AblateConfig, pieces: Pieces
) -> list[AblationRow]:
    """Every site, layer and scale, each saved as it finishes (a 30-layer model takes an
    hour on one core): a stage stopped part way resumes at the first one not finished."""
    model = steerer.model
    settings = [
        (Site(kind, layer), scale)
        for kind in ac.sites
        for layer in range(n_layers(model))
        for scale in ac.scales
    ]
    found: list[AblationRow] = []
    for site, scale in progress(settings, "ablate"):

        def measure(site: Site = site, scale: float = scale) -> list[AblationRow]:
            interventions = scale_site(site, site_width(model, site.kind), scale, ac.position)
            return [
                AblationRow(
                    site=site.kind,  # type: ignore[arg-type]
                    layer=site.layer,
                    scale=scale,
                    position=ac.position,
                    source=source,  # type: ignore[arg-type]
                    n_prompts=len(prompts[source]),
                    shares=steerer.shares(prompts[source], interventions),
                )
                for source in SOURCES
                if prompts[source]
            ]

        found += pieces.get(f"{site.kind}-{site.layer}-x{scale:g}", AblationRow, measure)
    return found


def format_ablation(baseline: dict[str, dict[str, float]], rows: list[dict[str, Any]]) -> str:
    """`ablate.json` as a plain-text table: the share of answers each change keeps."""
    lines = ["site     scale  from   kept   gen   mem  other"]
    unchanged = [("none", 1.0, source, shares) for source, shares in baseline.items()]
    changed = [
        (f"{row['site']}.{row['layer']}", row["scale"], row["from"], row["shares"]) for row in rows
    ]
    for site, scale, source, shares in [*unchanged, *changed]:
        lines.append(
            f"{site:<8} {scale:5g}  {source:<5} {shares[source]:5.2f} {shares['gen']:5.2f}"
            f" {shares['mem']:5.2f} {shares['other']:5.2f}"
        )
    return "\n".join(lines)


def plot_ablation(rows: list[dict[str, Any]], path: Path) -> None:
    """One heat map per (behaviour, scale): the share of answers that changed, and to what."""
    panels = sorted(
        {(row["from"], row["scale"]) for row in rows},
        key=lambda panel: (panel[1], SOURCES.index(panel[0])),
    )
    sites = sorted({row["site"] for row in rows})
    depth = 1 + max(row["layer"] for row in rows)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(0.7 * depth * len(panels) + 2.5, 0.9 * len(sites) + 1.4),
        dpi=120,
        squeeze=False,
    )
    for ax, (source, scale) in zip(axes[0], panels, strict=True):
        other_behaviour = "gen" if source == "mem" else "mem"
        changed = [[float("nan")] * depth for _ in sites]
        for row in rows:
            if (row["from"], row["scale"]) != (source, scale):
                continue
            shares, y, x = row["shares"], sites.index(row["site"]), row["layer"]
            changed[y][x] = 1 - shares[source]
            label = f"{shares[other_behaviour]:.0%} {other_behaviour}\n{shares['other']:.0%} other"
            ax.text(
                x,
                y,
                label,
                ha="center",
                va="center",
                fontsize=6,
                color="white" if changed[y][x] > 0.5 else "black",
            )
        image = ax.imshow(changed, vmin=0, vmax=1, cmap="magma_r", aspect="auto")
        ax.set_xticks(range(depth), [str(layer) for layer in range(depth)], fontsize=7)
        ax.set_yticks(range(len(sites)), sites, fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        where = "all positions" if rows[0]["position"] == "all" else "last position"
        ax.set_title(f"{source} answers, site x{scale:g} ({where})", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label="share of answers changed", shrink=0.9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
