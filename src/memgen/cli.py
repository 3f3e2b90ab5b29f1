"""The `memgen` command: one sub-command per stage, and `run` for the whole pipeline.

Every command takes `--config FILE.yaml`, `--run-dir DIR` and `key=value` overrides
(`train.lr=3e-4`, `task=math`). Bad input prints one line and exits with code 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from memgen.core.config import RunConfig, load_config, to_yaml
from memgen.core.errors import MemgenError
from memgen.pipeline import STAGES

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Find and steer the neurons behind memorization and generalization.\n\n"
    "Start with `memgen run --config gpt2-cipher-contest` (the README's main run: cipher, "
    "GPT-2 from scratch, CPU, minutes); `memgen run` alone runs the color default.",
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file or preset name (gpt2-cipher-cpu, ...); see `memgen config`.",
    ),
]
RunDirOption = Annotated[
    Path | None,
    typer.Option("--run-dir", "-o", help="Run folder [default: runs/<task>-seed<seed>]."),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Redo even if the manifest matches.")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. train.steps=500 task=math")
]


def _load(config: Path | None, overrides: list[str] | None) -> RunConfig:
    """The validated config, its task name and task options included (before any work)."""
    cfg = load_config(config, overrides or [])
    from memgen.tasks import make_task

    make_task(cfg.task, cfg.data.options)
    from memgen.neurons.scores import SCORERS
    from memgen.probe.probes import PROBES
    from memgen.steering.methods import METHODS

    for method in cfg.steer.methods:
        METHODS.get(method)
    SCORERS.get(cfg.neurons.scorer)
    _check_scorers(cfg)
    PROBES.get(cfg.probe.classifier)
    from memgen.core.modeling import check_model_source

    check_model_source(cfg.train.model)
    from memgen.pipeline import check_trained_on

    check_trained_on(cfg)
    return cfg


def _made_by_record(cfg: RunConfig, scorer: str) -> set[str]:
    """The sites at which `memgen record` makes `scorer`'s map (patching and the masks)."""
    if scorer == "patching":
        return set(cfg.record.patching)
    return {"mlp"} if scorer in cfg.record.masks else set()


def _check_scorers(cfg: RunConfig) -> None:
    """Every scorer named exists, and a causal one has what it is made from recorded."""
    from memgen.core.recorded import CAUSAL_FIX
    from memgen.neurons.scores import SCORERS

    uses: dict[str, set[str]] = {"specificity": set(cfg.specificity.sites), "delete": {"mlp"}}
    for field, scorers in (
        ("specificity", cfg.specificity.scorers),
        ("delete", cfg.delete.scorers),
    ):
        for scorer in scorers:
            if scorer in CAUSAL_FIX:  # a map `memgen record` makes with the model
                missing = sorted(uses[field] - _made_by_record(cfg, scorer))
                if missing:
                    fix = CAUSAL_FIX[scorer].format(site=",".join(missing))
                    raise MemgenError(
                        f"{field}.scorers has {scorer} at {', '.join(missing)}, which the "
                        f"record does not make: add {fix}"
                    )
            elif scorer != "attribution":  # attribution: from the recorded gradients
                SCORERS.get(scorer)
        if "attribution" in scorers and not cfg.record.gradients:
            raise MemgenError(f"{field}.scorers has attribution, which needs record.gradients=true")


def _writable(folder: Path) -> None:
    """Refuse a run folder that cannot be made, before any work and leaving nothing behind."""
    if folder.exists() and not folder.is_dir():
        raise MemgenError(f"--run-dir {folder} is a file; name a folder")
    if folder.exists():
        return
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:  # permissions alone cannot say (root, read-only mounts, /proc): try it
        folder.mkdir(parents=True)
    except OSError as exc:
        raise MemgenError(
            f"--run-dir {folder} cannot be created ({exc.strerror}); choose a writable folder"
        ) from None
    for path in made:  # the stages make it again when they write
        path.rmdir()


def _quiet_library_bars() -> None:
    """transformers' own bars ("Loading weights") on a terminal only, as memgen's tqdm bars."""
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _setup(
    config: Path | None, overrides: list[str] | None, run_dir: Path | None, trains: bool
) -> tuple[RunConfig, Path]:
    from memgen.core import distributed

    main = distributed.is_main()
    # Under a launcher the main process speaks for all: the others log warnings only.
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
    if not main:
        os.environ["TQDM_DISABLE"] = "1"
    _quiet_library_bars()
    from memgen.pipeline import RUN_CONFIG, default_run_dir, finished_stages

    if config is None and run_dir is not None and (run_dir / RUN_CONFIG).is_file():
        # A run folder remembers its config, so `memgen bound --run-dir runs/x` needs no
        # --config; overrides still apply on top.
        config = run_dir / RUN_CONFIG
        logging.getLogger(__name__).info("config: %s", config)
    elif config is None and run_dir is not None and (done := finished_stages(run_dir)):
        # The defaults would make `run` redo these stages for another config, and so
        # overwrite them (hours of training, say): ask for the config they were made with.
        raise MemgenError(
            f"{run_dir} holds finished stages ({', '.join(done)}) but no {RUN_CONFIG}: "
            "pass the --config (and overrides) they were made with"
        )
    cfg = _load(config, overrides)
    folder = run_dir or default_run_dir(cfg)
    if main:
        _writable(folder)
    if main and trains:
        _fetchable(cfg, folder)
    return cfg, folder


def _fetchable(cfg: RunConfig, folder: Path) -> None:
    """A hub model that training is about to load can be fetched, asked before the data
    stage; commands that do not train (a report offline, say), and a training that is up
    to date, never ask the hub."""
    from memgen.core.modeling import check_hub_model, is_hub_name
    from memgen.pipeline import would_run

    if is_hub_name(cfg.train.model) and would_run("train", folder, cfg):
        check_hub_model(cfg.train.model)


def _writing(folder: Path) -> contextlib.AbstractContextManager[None]:
    """One command writes a folder at a time: the main process holds its lock."""
    from memgen.core import distributed
    from memgen.core.locks import exclusive

    if not distributed.is_main():
        return contextlib.nullcontext()
    return exclusive(folder, f"the run folder {folder}")


def _stage_command(name: str, summary: str) -> None:
    def command(
        overrides: Overrides = None,
        config: ConfigOption = None,
        run_dir: RunDirOption = None,
        force: ForceOption = False,
    ) -> None:
        cfg, folder = _setup(config, overrides, run_dir, trains=name == "train")
        from memgen.core import distributed
        from memgen.pipeline import run_stage

        with _writing(folder):
            stage = run_stage(name, folder, cfg, force=force)
        if distributed.is_main():  # it speaks for all
            typer.echo(f"{name}: done -> {stage.path}")

    command.__doc__ = summary
    app.command(name)(command)


for _spec in STAGES:  # one command per stage, from the one table
    _stage_command(_spec.name, _spec.summary)


@app.command()
def run(
    overrides: Overrides = None,
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
) -> None:
    """Run the whole pipeline (data -> train -> ... -> report), skipping finished stages."""
    cfg, folder = _setup(config, overrides, run_dir, trains=until != "data")
    from memgen.core import distributed
    from memgen.pipeline import RUN_ORDER, run_all

    if until is not None and until not in RUN_ORDER:
        raise MemgenError(f"--until {until!r} is not a stage (stages: {', '.join(RUN_ORDER)})")
    with _writing(folder):
        run_all(folder, cfg, force=force, until=until)
    done = distributed.is_main()  # it speaks for all
    if done and until is not None and until != RUN_ORDER[-1]:
        typer.echo(f"done: every stage up to {until} -> {folder}")
    elif done:
        typer.echo(f"done: open {folder / 'report' / 'report.html'}")


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="Folder for the base model.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value, e.g. steps=3000 n_embd=192")
    ] = None,
    force: ForceOption = False,
) -> None:
    """Make a small pretrained LLaMA base (BPE tokenizer, generic text) to LoRA-tune offline."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_library_bars()
    from memgen.core.locks import exclusive
    from memgen.train.pretrain import load_pretrain_config
    from memgen.train.pretrain import pretrain as build_base

    settings = load_pretrain_config(overrides or [])
    # The base is written beside `out` and swapped in, so the lock is on the folder above.
    with exclusive(out.resolve().parent, f"the folder {out.parent} (a base is being built there)"):
        build_base(out, settings, force=force)
    typer.echo(f"pretrain: done -> {out}; LoRA-tune it with `memgen run train.model={out}`")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Finished run folders (two or more).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the comparison.")] = Path(
        "runs/compare"
    ),
    shared_units: Annotated[
        bool,
        typer.Option(
            "--shared-units",
            help="Runs of one model (one network's tasks, or adapters on one base): refuse "
            "any pair whose neurons do not correspond; compare them unit by unit.",
        ),
    ] = False,
) -> None:
    """Compare finished runs (seeds, tasks): spread of the results, agreement of the neurons."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_library_bars()
    from memgen.report.compare import format_table, write_comparison

    with _writing(out):
        comparison = write_comparison(runs, out, shared_units)
    typer.echo(format_table(comparison))
    typer.echo(f"compare: done -> {out}")


@app.command("config")
def show_config(overrides: Overrides = None, config: ConfigOption = None) -> None:
    """Print the resolved config as YAML (a starting point for --config files)."""
    typer.echo(to_yaml(_load(config, overrides)), nl=False)


@app.command()
def tasks() -> None:
    """List the registered tasks and their options."""
    from memgen.tasks import TASKS

    for name in TASKS.names():
        task_cls = TASKS.get(name)
        fields = task_cls.Options.model_fields.items()
        options = ", ".join(f"{k}={v.get_default(call_default_factory=True)!r}" for k, v in fields)
        typer.echo(f"{name}: {options}")


def main() -> None:
    # Typer itself answers usage errors (unknown option, bad value) with exit code 2.
    try:
        app()
    except MemgenError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
