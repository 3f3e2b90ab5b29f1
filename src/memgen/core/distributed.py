"""Several processes, one run: `accelerate launch` (or `torchrun`) splits the batches.

    accelerate launch --num_processes 4 -m memgen run --config gpt2-cipher-cpu

Every process runs the same command. The stages that use the model (`STAGES`'s
`parallel`) run in all of them: each process computes every Nth batch of a loop written
with `parallel_map`, and every process (or only the main one, for large arrays) receives
all the results in order. Because each batch is the one a single process would have made,
with the same rows and padding, the results equal a one-process run's. Only the main
process writes the run folder; the others write into a scratch folder that is deleted.
The other stages (data, neurons, probe, report) run in the main process alone while the
others wait.

With one process (no launcher), everything here is a no-op and nothing is imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
_solo = False  # inside `solo()`: this process works alone, whatever the launcher said


def world_size() -> int:
    """How many processes the launcher started (1 without one, or inside `solo()`)."""
    return 1 if _solo else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return 0 if _solo else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@cache
def _init() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on GPUs), once."""
    from accelerate import PartialState

    PartialState()


def barrier() -> None:
    """Wait for every process: the main one's files are written before anyone reads them."""
    if world_size() > 1:
        _init()
        torch.distributed.barrier()


def gather(value: T, *, to_main: bool = False) -> list[T] | None:
    """Every process's `value`, in rank order: on every process, or (`to_main`) on the main
    one only (the others get None), which moves each value once instead of N times."""
    if world_size() == 1:
        return [value]
    _init()
    found: list[Any] = [None] * world_size()
    if not to_main:
        torch.distributed.all_gather_object(found, value)
        return found
    torch.distributed.gather_object(value, found if is_main() else None, dst=0)
    return found if is_main() else None


def parallel_map(fn: Callable[[T], R], items: Iterable[T], *, to_main: bool = False) -> Iterator[R]:
    """`map(fn, items)`, with each process computing every Nth item.

    Every process must pass the same items (the loops here build them from the same
    inputs). Yields every result in order on every process, or on the main one only with
    `to_main` (the others yield nothing). Items are gathered N at a time, so memory stays
    that of N results, not all of them.
    """
    size, me = world_size(), rank()
    if size == 1:
        yield from map(fn, items)
        return
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield from _round(fn, group, me, to_main)
            group = []
    if group:
        yield from _round(fn, group, me, to_main)


def _round(fn: Callable[[T], R], group: list[T], me: int, to_main: bool) -> Iterator[R]:
    mine = fn(group[me]) if me < len(group) else None
    results = gather(mine, to_main=to_main)
    if results is not None:
        yield from results[: len(group)]  # type: ignore[misc]  # the first len(group) are R


def from_main(value: T) -> T:
    """The main process's `value` on every process (a result that float summation order
    could make differ by an ulp between processes, such as a fitted shift)."""
    if world_size() == 1:
        return value
    _init()
    box: list[Any] = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def all_sum(value: float) -> float:
    """The sum of `value` over processes (a loss's parts, a count)."""
    parts = gather(value)
    assert parts is not None
    return float(sum(parts))


@contextmanager
def solo() -> Iterator[None]:
    """Run the block as if launched alone (a main-only stage: no one else would answer)."""
    global _solo
    before, _solo = _solo, True
    try:
        yield
    finally:
        _solo = before


@cache
def scratch() -> Path:
    """A folder, deleted at exit, that a non-main process's stage writes into."""
    path = Path(tempfile.mkdtemp(prefix=f"memgen-rank{rank()}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
