"""One writer at a time: an exclusive lock on a folder, held for the life of a command.

The lock is the kernel's (`fcntl.flock` on the folder itself), so it dies with its
process: a folder whose last writer was killed is held by no one, and the next command
takes it over. While held, `.memgen.lock` in the folder names the holder (pid and
command), so a refused command can say who it is; the file goes when the lock does, and
a folder the lock had to make is removed again if nothing else was written into it, so a
command that fails validation leaves no trace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from memgen.core.errors import MemgenError

HOLDER = ".memgen.lock"


def _holder(folder: Path) -> str:
    try:
        text = (folder / HOLDER).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    return text.splitlines()[0] if text else "another process"


@contextlib.contextmanager
def exclusive(folder: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold `folder` exclusively, or fail at once naming the process that holds it.

    `what` names what is protected, for the error: "the run folder runs/x"; `wait`
    waits for the holder instead (a cache another process is filling).
    """
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise MemgenError(
                f"{what} is in use by {_holder(folder)}; wait for it to finish or stop it "
                "(one command writes a folder at a time)"
            ) from None
        holder = folder / HOLDER
        holder.write_text(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n", encoding="utf-8")
        try:
            yield
        finally:
            holder.unlink(missing_ok=True)
    finally:
        os.close(descriptor)  # closing releases the lock
        for path in made:  # only folders this call made, and only while still empty
            with contextlib.suppress(OSError):
                path.rmdir()


def run_folder_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock every memgen command that writes `run_dir` holds while it runs."""
    return exclusive(run_dir, f"the run folder {run_dir}")
