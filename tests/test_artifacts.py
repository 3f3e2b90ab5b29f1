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
