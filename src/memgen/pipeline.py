"""The whole method, stage by stage, into one run folder: the one table of stages.

    memgen run                         # color task, GPT-2 from scratch, CPU, minutes
    memgen run task=math --run-dir runs/math

`STAGES` declares every stage once: the stages whose outputs it reads, the config it
reads, and the function that makes it. The CLI's commands, `memgen run`'s order, each
stage's identity and the report's inputs all come from it.

A stage's identity is its own config plus its inputs' identities (each input's config,
inputs and output hashes, recursively), so a change anywhere upstream makes everything
downstream stale. A finished stage whose identity matches is skipped, so re-running
after a crash or a config change redoes only what changed. A single-stage command
(`memgen steer ...`) whose upstream is stale for the config it was given stops with one
line naming those stages, before any work: it never reads outputs made under another
config.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from threadpoolctl import threadpool_limits

from memgen.core import distributed
from memgen.core.artifacts import Stage, Step, write_text
from memgen.core.config import RunConfig, to_yaml
from memgen.core.errors import MemgenError

log = logging.getLogger(__name__)
RUN_CONFIG = "config.yaml"  # in a run folder: the config its outputs were last made with


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: str  # "module:function(step: Step)", imported lazily: `--help` stays fast
    reads: tuple[str, ...]  # stages whose outputs it reads
    # The config it reads: whole sections, or "section.field". Upstream stages' config
    # reaches it through `reads`; anything else it touches is an error (`declared`).
    config: tuple[str, ...]
    summary: str  # the command's help
    in_run: bool = True  # False: its own command, run on a finished run
    # "module:function(cfg) -> dict": identity the config cannot show (a base's file hashes).
    extra: str | None = None
    optional: tuple[str, ...] = field(default=())  # read when finished and current
    # Figures the report shows: report name -> file in this stage's folder.
    figures: Mapping[str, str] = field(default_factory=dict)
    # True: under a launcher every process runs it, each taking a share of the batches
    # (memgen.core.distributed); False: the main process runs it while the others wait.
    parallel: bool = False


# What `specificity` reads of `steer`: the prompt split, how shifts are fitted and how
# many prompts their collateral (KL) is measured on.
STEER_FIELDS = (
    "steer.n_prompts", "steer.fit_steps", "steer.fit_lr", "steer.batch_size",
    "steer.n_side_effect",
)  # fmt: skip

STAGES: tuple[StageSpec, ...] = (
    StageSpec("data", "memgen.data.stage:run_data", (), ("data",),
              "Generate the task's training, dev and test sets (JSONL).",
              extra="memgen.data.stage:resolved_options"),
    StageSpec("train", "memgen.train.stage:run_train", ("data",),
              ("train", "behave.num_beams", "behave.max_new_tokens"),
              "Train GPT-2 from scratch, or LoRA-tune train.model (steps=0: keep it as it is); "
              "resumes if killed.",
              extra="memgen.train.stage:base_identity_of", figures={"curve": "curve.png"},
              parallel=True),
    StageSpec("behave", "memgen.behave.stage:run_behave", ("data", "train"), ("behave",),
              "Label test answers (mem/gen/other) and mine flipped pairs.", parallel=True),
    StageSpec("record", "memgen.record.stage:run_record", ("train", "behave"), ("record",),
              "Record last-token activations of flipped pairs at every layer.", parallel=True),
    StageSpec("neurons", "memgen.neurons.stage:run_neurons", ("record",), ("neurons",),
              "Score neurons (NMD, correlation) and select the top-N% sets.",
              figures={"nmd": "nmd_sorted.png", "share": "layer_share.png"}),
    StageSpec("probe", "memgen.probe.stage:run_probe", ("record",), ("probe",),
              "Predict mem vs gen from activations, layer by layer.",
              figures={"probe": "accuracy.png", "learning_curve": "learning_curve.png"}),
    StageSpec("steer", "memgen.steering.stage:run_steer",
              ("data", "train", "behave", "record", "neurons"), ("steer",),
              "Tune each steering method on one split, report it held out, with controls.",
              figures={"steering": "steering.png"}, parallel=True),
    StageSpec("specificity", "memgen.specificity.stage:run_specificity",
              ("train", "behave", "record"), ("specificity", *STEER_FIELDS),
              "Fitted steering on top-N% vs as many random neurons, over set size.",
              figures={"specificity": "specificity.png"}, parallel=True),
    StageSpec("report", "memgen.report.stage:run_report",
              ("train", "behave", "neurons", "probe", "steer", "specificity"), (),
              "Write results.json, figures and a self-contained report.html.",
              optional=("bound", "ablate", "localize", "delete")),
    StageSpec("bound", "memgen.bound.stage:run_bound", ("train", "behave", "record"),
              ("bound", "steer.batch_size"),
              "Fit the best shared shift per layer: how far could any steering go?",
              in_run=False, parallel=True),
    StageSpec("ablate", "memgen.ablate.stage:run_ablate", ("train", "behave"), ("ablate",),
              "Knock out (or scale) each attention and MLP layer: where is it decided?",
              in_run=False, figures={"ablation": "ablate.png"}, parallel=True),
    StageSpec("localize", "memgen.localize.stage:run_localize", ("data", "train"),
              ("localize",),
              "Plant facts in known MLP neurons: do the selectors find and delete them?",
              in_run=False),
    StageSpec("delete", "memgen.delete.stage:run_delete", ("data", "train", "behave", "record"),
              ("delete",),
              "Delete each scorer's top-N% MLP neurons: is memory lost more than with random ones?",
              in_run=False, parallel=False, figures={"deletion": "delete.png"}),
)  # fmt: skip
SPECS: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}
RUN_ORDER: tuple[str, ...] = tuple(spec.name for spec in STAGES if spec.in_run)


def spec_of(name: str) -> StageSpec:
    if name not in SPECS:
        raise MemgenError(f"{name!r} is not a stage (stages: {', '.join(SPECS)})")
    return SPECS[name]


def _function(target: str) -> Callable[..., Any]:
    module, function = target.split(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


@cache
def upstream(name: str) -> tuple[str, ...]:
    """Every stage `name` depends on, directly or not, in table order."""
    found = set(SPECS[name].reads)
    for read in SPECS[name].reads:
        found.update(upstream(read))
    return tuple(spec.name for spec in STAGES if spec.name in found)


def identity(name: str, cfg: RunConfig) -> dict[str, Any]:
    """The stage's own config: task, seed, its declared sections and fields, and extras."""
    spec = SPECS[name]
    config: dict[str, Any] = {"task": cfg.task, "seed": cfg.seed}
    for entry in spec.config:
        section, _, key = entry.partition(".")
        value = getattr(cfg, section)
        config[entry] = getattr(value, key) if key else value.model_dump(mode="json")
    if spec.extra is not None:
        config.update(_function(spec.extra)(cfg))
    return config


def made_with(run_dir: Path, name: str) -> RunConfig:
    """The config a finished stage and the stages upstream of it were made with.

    Rebuilt from their manifests, so it holds for a run made from Python, with no
    config.yaml beside it; sections none of them reads keep their defaults.
    """
    merged: dict[str, Any] = {}
    for stage in (*upstream(name), name):
        for key, value in Stage(run_dir, stage).manifest()["config"].items():
            section, _, field_name = key.partition(".")
            if section not in RunConfig.model_fields:  # identity only (a base's file hashes)
                continue
            if field_name:
                merged.setdefault(section, {})[field_name] = value
            elif isinstance(value, dict):
                merged.setdefault(section, {}).update(value)
            else:
                merged[key] = value
    return RunConfig.model_validate(merged)


def check_trained_on(cfg: RunConfig) -> None:
    """`train.steps=0` on a model a memgen run trained: analyse it on the data it learned.

    The memorized cases (triggers, names) are drawn from the seed and the task's options,
    so a per-task run of a mixture model with another seed or options would label recall
    of the mixture's cases as `other` and call unseen cases memorized, silently. Models
    from elsewhere (a hub name, a folder outside a run) are taken as they are.
    """
    from memgen.tasks.base import parse_options

    model = Path(cfg.train.model).expanduser()
    if cfg.train.steps != 0 or (model.parent.name, model.name) != ("train", "model"):
        return
    run_dir = model.parent.parent
    if not Stage(run_dir, "train").is_finished():
        return
    made = made_with(run_dir, "train")
    if made.task == "mix":
        components = parse_options("mix", made.data.options).model_dump(mode="json")["tasks"]
        if cfg.task not in components:
            raise MemgenError(
                f"{model} was trained on the mixture {', '.join(components)}, not on "
                f"task {cfg.task!r}: analyse it as one of those"
            )
        trained = components[cfg.task]
    elif made.task == cfg.task:
        trained = parse_options(made.task, made.data.options).model_dump(mode="json")
    else:
        raise MemgenError(
            f"{model} was trained on task {made.task!r}, not {cfg.task!r}: "
            f"set task={made.task} or point train.model at a {cfg.task} model"
        )
    given = parse_options(cfg.task, cfg.data.options).model_dump(mode="json")
    fix = [f"data.options.{k}={json.dumps(v)}" for k, v in trained.items() if given[k] != v]
    if made.seed != cfg.seed:
        fix.append(f"seed={made.seed}")
    if fix:
        raise MemgenError(
            f"{model} was trained on {cfg.task} data of another seed or options, so its "
            f"memorized cases would be mislabelled: add {' '.join(fix)}"
        )


def stale(name: str, run_dir: Path, cfg: RunConfig) -> list[str]:
    """The stages upstream of `name` that are unfinished or were made for another config.

    A stage whose own inputs are absent was made elsewhere (activations recorded on
    another machine, say) and stands as it is; an absent stage that `name` does not read
    directly is not needed.
    """
    out = []
    for before in upstream(name):
        stage = Stage(run_dir, before)
        inputs = [Stage(run_dir, read) for read in SPECS[before].reads]
        if not stage.is_finished():
            if before in SPECS[name].reads:
                out.append(before)
        elif all(i.is_finished() for i in inputs) and not stage.matches(
            identity(before, cfg), inputs
        ):
            out.append(before)
    return out


def would_run(name: str, run_dir: Path, cfg: RunConfig) -> bool:
    """Whether `memgen run` would run `name` for this config rather than skip it: an
    upstream stage is stale, or its own finished outputs were made for another config."""
    if stale(name, run_dir, cfg):
        return True
    inputs = [Stage(run_dir, read) for read in SPECS[name].reads]
    return not Stage(run_dir, name).matches(identity(name, cfg), inputs)


class _Undeclared:
    """Stands in for config a stage did not declare: touching it is a bug in the table."""

    def __init__(self, stage: str, section: str, allowed: Iterable[str] = ()) -> None:
        self._stage, self._section, self._allowed = stage, section, set(allowed)

    def __getattr__(self, key: str) -> NoReturn:
        if key.startswith("__"):  # copy, pickle and friends probe for these: not a read
            raise AttributeError(key)
        raise MemgenError(
            f"stage {self._stage!r} read {self._section}.{key}, which its entry in "
            "memgen.pipeline.STAGES does not declare; add it there"
        )


class _Partial(_Undeclared):
    def __init__(self, stage: str, section: str, value: Any, allowed: Iterable[str]) -> None:
        super().__init__(stage, section, allowed)
        self._value = value

    def __getattr__(self, key: str) -> Any:
        if key in self._allowed:
            return getattr(self._value, key)
        return super().__getattr__(key)


def declared(name: str, cfg: RunConfig) -> RunConfig:
    """`cfg` with only what `name` may read: its own config and its upstream's."""
    entries = [e for stage in (*upstream(name), name) for e in SPECS[stage].config]
    whole = {e for e in entries if "." not in e}
    fields: dict[str, set[str]] = {}
    for entry in entries:
        if "." in entry:
            section, key = entry.split(".", 1)
            fields.setdefault(section, set()).add(key)
    update: dict[str, Any] = {}
    for section in RunConfig.model_fields:
        value = getattr(cfg, section)
        if section in whole or not hasattr(value, "model_dump"):
            continue  # a whole section, or a top-level value (task, seed, device)
        if section in fields:
            update[section] = _Partial(name, section, value, fields[section])
        else:
            update[section] = _Undeclared(name, section)
    return cfg.model_copy(update=update)


def open_step(run_dir: Path, name: str, cfg: RunConfig, force: bool) -> Step | None:
    """None when the stage is up to date (skipped); else the Step to run.

    Stops with one line when an upstream stage is missing or stale for this config.
    """
    spec = spec_of(name)
    behind = stale(name, run_dir, cfg)
    missing = [before for before in behind if not Stage(run_dir, before).is_finished()]
    # `memgen run` runs only RUN_ORDER's stages: for the others, up to their last input.
    until = name if spec.in_run else max(spec.reads, key=RUN_ORDER.index)
    if missing:
        raise MemgenError(
            f"{name}: {', '.join(missing)} has not run in {run_dir}; run "
            f"`memgen {missing[0]} --run-dir {run_dir}` first, or `memgen run --until {until}`"
        )
    if behind:
        raise MemgenError(
            f"{name}: {', '.join(behind)} {'was' if len(behind) == 1 else 'were'} made with "
            f"another config; run `memgen run --until {until}` with the same --config and "
            "overrides (or pass the ones the run was made with)"
        )
    inputs = {read: Stage(run_dir, read) for read in spec.reads}
    for optional in spec.optional:
        stage = Stage(run_dir, optional)
        if stage.is_current():
            inputs[optional] = stage
        elif stage.is_finished():
            log.warning(
                "%s: %s predates the stages it read; re-run `memgen %s`", name, optional, optional
            )
    config = identity(name, cfg)
    stage = Stage(run_dir, name)
    if stage.up_to_date(config, list(inputs.values()), force):
        return None
    if not distributed.is_main():  # the main process alone writes the run folder
        stage = Stage(distributed.scratch(), name)
    return Step(run_dir, stage, inputs, config, declared(name, cfg), force)


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.task}-seed{cfg.seed}"


def run_stage(name: str, run_dir: Path, cfg: RunConfig, force: bool = False) -> Stage:
    import memgen.tasks  # noqa: F401  (registers the tasks)

    spec, started, ran = spec_of(name), time.perf_counter(), False
    if spec.parallel or distributed.world_size() == 1:
        ran = _open_and_run(spec, run_dir, cfg, force)
    elif distributed.is_main():
        with distributed.solo():
            ran = _open_and_run(spec, run_dir, cfg, force)
    distributed.barrier()  # its files are written before any process reads them
    if ran:  # a skipped stage leaves config.yaml alone: a later stage may yet fail
        remember(cfg, run_dir)
    log.info("%s: %.1f s", name, time.perf_counter() - started)
    return Stage(run_dir, name)


def remember(cfg: RunConfig, run_dir: Path) -> None:
    """The config the folder's outputs were last made with, for the next command on it.

    Written as each stage finishes, not when a command does: a run stopped in its third
    stage still tells the next `memgen run --run-dir` what its first two were made with.
    """
    if not distributed.is_main():
        return  # the main process writes the folder
    header = "# The config this run's outputs were last made with; commands on this folder\n"
    header += "# read it when given no --config (memgen.cli).\n"
    write_text(run_dir / RUN_CONFIG, header + to_yaml(cfg))


def finished_stages(run_dir: Path) -> list[str]:
    return [spec.name for spec in STAGES if Stage(run_dir, spec.name).is_finished()]


def _open_and_run(spec: StageSpec, run_dir: Path, cfg: RunConfig, force: bool) -> bool:
    """The stage's function on its opened Step; nothing when it is up to date.

    Returns whether it ran.
    """
    step = open_step(run_dir, spec.name, cfg, force)
    if step is None:
        return False
    # numpy's and scipy's OpenBLAS on one thread: their matrices here are small (probes,
    # scores), and its spinning threads beside torch's made the probe stage 10-20x slower
    # on two cores (benchmarks/stages.py, "probe"). torch's own threads are left alone.
    with threadpool_limits(limits=1, user_api="blas"):
        _function(spec.run)(step)
    return True


def run_all(run_dir: Path, cfg: RunConfig, force: bool = False, until: str | None = None) -> None:
    for name in RUN_ORDER:
        run_stage(name, run_dir, cfg, force=force)
        if name == until:
            break
    remember(cfg, run_dir)  # every stage stands: the config is the folder's, unread sections too
