"""Typed result rows: the one shape of every row a stage reports.

A stage builds its rows as these models and writes them with `dump_rows`; the report,
`memgen compare` and the figures read them back with `read_rows`, which validates them.
A field renamed or dropped on one side fails at once, naming the file and the fix,
instead of turning into a KeyError in a figure. `results.json` is made from the same
rows, and docs/results-schema.md is checked against their fields (tests/test_rows.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memgen.core.errors import MemgenError
from memgen.core.hooks import Position
from memgen.core.stats import holm

Rates = dict[str, float]  # share of prompts per behaviour: gen, mem, other
Direction = Literal["mem_to_gen", "gen_to_mem"]


class Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Spread(Row):
    """`memgen.core.stats.summarise`: mean, sample sd and 95% t-interval (None below 2)."""

    n: int
    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    min: float
    max: float


class ShiftSize(Row):
    """How hard a shift pushes: the median moved neuron in its sds, and norm over ‖h‖."""

    sd: float
    relative_norm: float


class Tuning(Row):
    """The chosen setting on the tuning prompts it was chosen on (the paper's protocol)."""

    n_prompts: int
    rates: Rates
    retention: float | None


class Matched(Row):
    """The chosen treatment given to random neurons (or directions), over draws."""

    rates: Rates  # the draws' prompts pooled
    target_per_draw: list[float]
    target: Spread
    retention_per_draw: list[float]
    p_value: float  # the targeted share's rank among the draws (core.stats.rank_p_value)
    prediction: list[float] | None  # where one more draw would land, 95%


class Controls(Row):
    matched: Matched
    random: Rates | None = None  # the paper's controls (sparse methods only)
    low_correlation: Rates | None = None


class SideEffect(Row):
    retention: float
    n_retention: int
    kl: float
    train_accuracy: float
    baseline: float


class SteeringRow(Row):
    """One method's chosen setting, measured on the held-out half (stage `steer`)."""

    direction: Direction
    method: str
    selection: str
    top_n: float | None
    size: float
    position: Position
    split: Literal["held_out"] = "held_out"
    n_prompts: int
    targeted: Rates
    ci: dict[str, list[float]]
    tuning: Tuning
    n_neurons: int
    shift: ShiftSize
    controls: Controls
    side_effect: SideEffect
    control_kind: str
    beats_matched: bool
    file: str | None = None  # set on `steering_best` rows: the saved steering

    @property
    def toward(self) -> str:
        return "gen" if self.direction == "mem_to_gen" else "mem"


class SpecificityRow(Row):
    """Fitted steering on a top-N% set beside matched random sets (stage `specificity`)."""

    site: str
    scorer: str
    direction: Direction
    size: float
    n_neurons: int
    budget: float
    n_prompts: int
    targeted: Rates
    targeted_ci: list[float]
    matched: Spread
    matched_per_draw: list[float]
    p_value: float  # the top set's rank among its draws (core.stats.rank_p_value)
    p_value_holm: float  # p_value, Holm-adjusted over every row of the stage
    matched_prediction: list[float] | None  # where one more draw would land, 95%
    # The continuous outcome: the mean change, over the held-out prompts, of the logit of
    # the target answer's token minus the source answer's where the two part (their first
    # tokens, unless they share some: `memgen.core.forks`); None in files written before
    # it was measured.
    margin_gain: float | None = None
    matched_margin_gain: list[float] | None = None  # the same, per matched draw
    p_value_margin: float | None = None  # the top set's margin gain ranked among the draws'
    # Per prompt, the top set's margin gain minus the draws' mean there: [mean, 95% t-CI].
    paired_margin: list[float] | None = None
    # At matched collateral: the next-token KL each shift causes on prompts the model
    # already answers with the target behaviour, and each draw's margin gain with its shift
    # scaled until its KL equals the top set's (`steering.shifts.scales_at_kl`).
    kl: float | None = None
    matched_kl: list[float] | None = None
    matched_scale_at_kl: list[float] | None = None
    matched_margin_gain_at_kl: list[float] | None = None
    p_value_margin_at_kl: float | None = None


class Deleted(Row):
    """What one deletion kept, as shares of held-out prompts (`memgen.delete.measure`)."""

    mem_kept: float  # answered by memory before, and still
    to_rule: float  # answered by memory before, the rule's answer now
    gen_kept: float  # answered by the rule before, and still (the collateral)
    train_kept: float  # training prompts answered as trained, and still

    @property
    def net(self) -> float:
        """Forgetting net of collateral: rule answers kept minus memorized answers kept
        (`FactsDeleted.net` is the same for planted facts)."""
        return self.gen_kept - self.mem_kept


class AblationRow(Row):
    """One site at one layer scaled, and what its answers became (stage `ablate`)."""

    # `from` in ablate.json, a Python keyword here (merged with Row's frozen, extra=forbid).
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    site: Literal["attn", "mlp"]
    layer: int
    scale: float
    position: Position
    source: Literal["mem", "gen"] = Field(alias="from")  # the unablated answer's behaviour
    n_prompts: int
    shares: Rates


class FactsDeleted(Row):
    """What deleting one selection left of the planted facts (`memgen.localize.test`)."""

    facts_recalled: float  # share of the facts greedy decoding still gives
    ordinary_kept: float  # share of the ordinary answers given before, still given

    @property
    def net(self) -> float:
        """Forgetting net of collateral: ordinary answers kept minus facts recalled."""
        return self.ordinary_kept - self.facts_recalled


class LocalizationRow(Row):
    """One selector at one set size on the planted control, placed among matched random
    selections (stage `localize`)."""

    selector: str
    k: int
    recall_at_k: float | None  # share of the selection that was planted
    deletion: FactsDeleted
    random_recalled: list[float]  # one per draw, the selection's per-layer counts
    random_ordinary_kept: list[float]
    p_value: float  # rank p-value of forgetting at least as much as this selection
    p_value_net: float  # the same, of ordinary answers kept minus facts recalled
    # Both Holm-adjusted over every row of the stage (`with_holm`).
    p_value_holm: float = 1.0
    p_value_net_holm: float = 1.0


class DeletionRow(Row):
    """A scorer's top-N% MLP neurons deleted, beside matched random sets (stage `delete`)."""

    scorer: str
    ablation: Literal["mean", "zero"]
    size: float
    k: int
    per_layer: list[int]
    n_mem: int
    n_gen: int
    n_train: int
    deleted: Deleted
    mem_kept_ci: list[float]
    random: list[Deleted]  # one per draw, same per-layer counts, same ablation
    control: Literal["layer", "spread"] = "layer"  # how the draws match (delete.control)
    random_mem_kept: Spread
    p_value: float  # rank of its forgetting among the draws (core.stats.rank_p_value)
    p_value_net: float  # the same for forgetting net of collateral, gen_kept - mem_kept
    p_value_rule: float  # the same for the rule answers lost: are these the rule's neurons?
    p_value_holm: float  # p_value, Holm-adjusted over every row of the stage


class MemoryMatrix(Row):
    """Per memory: neurons chosen on that memory's pairs alone, deleted, and every
    memory's held-out prompts measured (stage `delete`, `delete.matrix`)."""

    scorer: str
    ablation: Literal["mean", "zero"]
    size: float
    memories: list[str]
    n_pairs: list[int]
    n_prompts: list[int]
    kept: list[list[float]]  # [chosen for i][measured on j]: mem_kept
    diagonal: float  # mean kept where i == j
    off_diagonal: float  # mean kept where i != j
    own_most: float  # share of rows whose own memory kept least (ties count a share)
    chance: float  # that share for a set that ignores which memory it was chosen for
    p_value: float  # the diagonal's rank among relabellings (delete.matrix.relabelled_p_value)


class BoundRow(Row):
    """One layer's fitted shared shift, in-sample and held out (stage `bound`)."""

    direction: Direction
    site: str
    layer: int
    n_fit: int
    fit: float
    n_held_out: int
    held_out: Rates
    shift_norm: float
    relative_norm: float


class ProbeLayer(Row):
    """A probe's cross-validated accuracy at one site and layer (stage `probe`)."""

    site: str
    layer: int
    accuracy: float
    ci_low: float
    ci_high: float
    n: int  # prompts scored (both members of every pair)


class RunFigures(Row):
    """One finished run's headline figures, side by side in `memgen compare`."""

    run: str
    task: str
    seed: int | None
    model: str | None
    kept_step: int | None
    gen: float | None
    mem: float | None
    other: float | None
    flip_rate: float | None
    probe_best: float | None
    mem_to_gen: float | None
    mem_to_gen_control: float | None
    gen_to_mem: float | None
    gen_to_mem_control: float | None
    split_half_spearman: float | None


R = TypeVar("R", bound=Row)


def with_holm(rows: Sequence[R], *fields: str) -> list[R]:
    """`rows` with each p-value field (`p_value` unless named) Holm-adjusted over all of
    them into its `<field>_holm`."""
    updates: list[dict[str, float]] = [{} for _ in rows]
    for field in fields or ("p_value",):
        adjusted = holm([getattr(row, field) for row in rows])
        for update, a in zip(updates, adjusted, strict=True):
            update[f"{field}_holm"] = a
    return [row.model_copy(update=update) for row, update in zip(rows, updates, strict=True)]


def dump_rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows as the JSON a manifest or a stage's file holds."""
    return [row.model_dump(mode="json") for row in rows]


def read_rows(kind: type[R], raw: Sequence[Any], where: str) -> list[R]:
    """`raw` rows validated as `kind`; one line naming `where` and the fix if they do not fit."""
    try:
        return [kind.model_validate(row) for row in raw]
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise MemgenError(
            f"{where}: a {kind.__name__} has {field!r}: {first['msg']} (written by another "
            "memgen version?); re-run that stage with --force"
        ) from None


def read_row(kind: type[R], raw: Any, where: str) -> R:
    return read_rows(kind, [raw], where)[0]
