"""One writer per run folder: a second command is refused naming the first; a stale lock is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memgen.core.errors import MemgenError
from memgen.core.locks import HOLDER, exclusive, run_folder_lock

# A process that takes a run folder's lock, says so, and sleeps holding it.
_HOLD = """
import sys, time
from pathlib import Path
from memgen.core.locks import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holding(folder: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _memgen(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run `memgen ARGS` in this process, as the console script does."""
    from memgen.cli import main

    monkeypatch.setattr(sys, "argv", ["memgen", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    code = exited.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def test_a_second_command_on_a_held_run_folder_exits_2_naming_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    holder = _holding(folder)
    try:
        before = sorted(folder.iterdir())
        code, stderr = _memgen(["data", "--run-dir", str(folder), "data.n_train=50"],
                               monkeypatch, capsys)  # fmt: skip
        assert sorted(folder.iterdir()) == before  # the refused command wrote nothing
    finally:
        holder.terminate()
        holder.wait()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr
    assert f"pid {holder.pid}" in errors[0] and "in use" in errors[0]


def test_a_lock_left_by_a_killed_process_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    holder = _holding(folder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert f"pid {holder.pid}" in (folder / HOLDER).read_text()  # it had no time to clean up
    code, stderr = _memgen(["data", "--run-dir", str(folder), "data.n_train=50",
                            "data.n_dev=10", "data.n_test=10"], monkeypatch, capsys)  # fmt: skip
    assert code == 0, stderr
    assert (folder / "data").is_dir() and not (folder / HOLDER).exists()


def test_the_lock_is_exclusive_within_a_process_and_leaves_no_trace(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    with run_folder_lock(folder):
        assert (folder / HOLDER).read_text().startswith(f"pid {os.getpid()} ")
        refused = pytest.raises(MemgenError, match=f"in use by pid {os.getpid()}")
        with refused, exclusive(folder, "the run folder"):
            pass
    assert not (tmp_path / "a").exists()  # folders it made, still empty, are removed again


def test_a_waiting_lock_waits_for_the_holder(tmp_path: Path) -> None:
    holder = _holding(tmp_path)
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    with exclusive(tmp_path, "the cache", wait=True):
        waited = time.monotonic() - started
    holder.wait()
    assert waited >= 0.9
