"""Stage folders: a finished stage is reused only while its outputs are still there."""

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from memgen.core.artifacts import Stage


def _finished(run_dir: Path) -> Stage:
    stage = Stage(run_dir, "data")
    out = stage.begin()
    (out / "train.jsonl").write_text("{}\n")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.bin").write_text("resume state, not an output")
    stage.finish({"n": 1}, [], seed=0)
    return stage


def test_a_deleted_output_makes_the_stage_run_again(tmp_path: Path) -> None:
    stage = _finished(tmp_path)
    assert stage.matches({"n": 1}, [])
    assert not stage.matches({"n": 2}, [])
    (stage.path / "train.jsonl").unlink()
    assert not stage.matches({"n": 1}, [])


def test_outputs_are_found_under_a_folder_named_checkpoints(tmp_path: Path) -> None:
    stage = _finished(tmp_path / "checkpoints" / "run1")
    assert list(stage.manifest()["outputs"]) == ["train.jsonl"]


def test_a_stage_is_current_until_a_stage_it_read_changes(tmp_path: Path) -> None:
    data = _finished(tmp_path)
    later = Stage(tmp_path, "train")
    later.begin()
    (later.path / "model.txt").write_text("weights")
    later.finish({}, [data], seed=0)
    assert later.is_current()
    (data.path / "train.jsonl").write_text('{"other": 1}\n')
    data.finish({"n": 1}, [], seed=0)  # the data stage re-ran with new outputs
    assert not later.is_current()
    assert not Stage(tmp_path, "never-run").is_current()


def test_a_finished_stage_shares_its_files_as_the_umask_allows(tmp_path: Path) -> None:
    # safetensors writes 0600 whatever the umask; the JSON beside it gets 0644 under 022.
    old = os.umask(0o022)
    try:
        stage = Stage(tmp_path, "train")
        out = stage.begin()
        save_file({"w": np.zeros(2)}, str(out / "model.safetensors"))
        assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o600
        (out / "run.sh").write_text("#!/bin/sh\n")
        (out / "run.sh").chmod(0o755)
        stage.finish({}, [], seed=0)
        assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
        assert (out / "run.sh").stat().st_mode & 0o777 == 0o755  # only widened, never narrowed
    finally:
        os.umask(old)
