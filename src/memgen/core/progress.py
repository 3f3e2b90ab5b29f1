"""Progress on a stage's long loop: a bar on a terminal, a line now and then in a log.

    for site, scale in progress(settings, "ablate"):
        ...

tqdm turns itself off when stderr is not a terminal (`disable=None`), which is where the
longest runs go: `nohup memgen ablate ... > ablate.log` on a 30-layer model is an hour of
silence. Off a terminal this logs how many items are done, the time spent and a linear
estimate of the time left, at most once every `every_s` seconds and after the last item.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")


def progress(items: Sequence[T], desc: str, every_s: float = 60.0) -> Iterator[T]:
    """`items`, one at a time; `desc` names the loop in the bar or the log line."""
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc)
        return
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item  # resumes when the caller has finished with `item`
        now = time.monotonic()
        if now - last >= every_s or done == len(items):
            last = now
            spent = now - start
            left = spent / done * (len(items) - done)
            log.info(
                "%s: %d of %d done in %.0f s, about %.0f s left",
                desc,
                done,
                len(items),
                spent,
                left,
            )
