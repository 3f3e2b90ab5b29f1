import logging

import pytest

from memgen.core.progress import progress


def test_progress_logs_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    # pytest captures stderr, so this is the log-file case: a line per item at every_s=0.
    with caplog.at_level(logging.INFO, logger="memgen.core.progress"):
        seen = list(progress(["a", "b", "c"], "ablate", every_s=0))
    assert seen == ["a", "b", "c"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("ablate: 1 of 3 done in ")
    assert lines[-1].startswith("ablate: 3 of 3 done") and lines[-1].endswith("about 0 s left")


def test_progress_throttles_but_reports_the_end(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="memgen.core.progress"):
        assert list(progress(range(50), "delete", every_s=3600)) == list(range(50))
    assert [r.getMessage()[:22] for r in caplog.records] == ["delete: 50 of 50 done "]
    assert list(progress([], "nothing")) == []
