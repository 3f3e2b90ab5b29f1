"""One writer per run folder: a second command is refused naming the first; a stale lock is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Exited
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


def test_a_second_command_on_a_held_run_folder_exits_2_naming_the_holder(
    tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    folder = tmp_path / "run"
    holder = _holding(folder)
    try:
        before = sorted(folder.iterdir())
        done = memgen_cli("data", "--run-dir", folder, "data.n_train=50")
        assert sorted(folder.iterdir()) == before  # the refused command wrote nothing
    finally:
        holder.terminate()
        holder.wait()
    assert done.returncode == 2 and len(done.errors) == 1, done.stderr
    assert f"pid {holder.pid}" in done.errors[0] and "in use" in done.errors[0]


def test_a_lock_left_by_a_killed_process_is_taken_over(
    tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    folder = tmp_path / "run"
    holder = _holding(folder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert f"pid {holder.pid}" in (folder / HOLDER).read_text()  # it had no time to clean up
    done = memgen_cli("data", "--run-dir", folder, "data.n_train=50", "data.n_dev=10",
                      "data.n_test=10")  # fmt: skip
    assert done.returncode == 0, done.stderr
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
