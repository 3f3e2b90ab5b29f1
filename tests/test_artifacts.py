"""Stage folders: a finished stage is reused only while its outputs are still there."""

from pathlib import Path

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
