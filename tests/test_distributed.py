"""Two processes under `accelerate launch` make the run folder one process makes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memgen.core import distributed
from test_pipeline import TINY

# Two runs of the whole pipeline, one under a 2-process launcher: the slow suite (.ci/run).
pytestmark = pytest.mark.slow

# Timings and versions differ between any two runs; everything else must not.
_VOLATILE = {"seconds", "created", "versions"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _memgen(run_dir: Path, processes: int, *args: str) -> None:
    launch = [sys.executable, "-m", "memgen"]
    if processes > 1:
        launch = [
            sys.executable, "-m", "accelerate.commands.launch", "--cpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "memgen",
        ]  # fmt: skip
    # One thread per process in both runs: float sums then run in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launch, *args, "--run-dir", str(run_dir), *TINY], check=True, env=env)


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("launch")
    for processes in (1, 2):
        _memgen(root / str(processes), processes, "run")
        _memgen(root / str(processes), processes, "bound")
    return root / "1", root / "2"


def test_two_processes_make_the_run_one_process_makes(one_and_two: tuple[Path, Path]) -> None:
    one, two = one_and_two
    # Training: the same evaluations, so the same kept checkpoint. The gradient is summed
    # per process and then across them, so the loss may differ in its last bits.
    histories = [json.loads((run / "train/history.json").read_text()) for run in one_and_two]
    losses = [[row.pop("loss") for row in history] for history in histories]
    assert histories[0] == histories[1]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    # Behaviour: same generated answers and labels, same flipped pairs.
    for name in ("behave/test_outputs.jsonl", "behave/pairs.jsonl"):
        assert (one / name).read_text() == (two / name).read_text(), name
    for kind in ("resid", "mlp"):
        single = np.load(one / f"record/{kind}.npy")
        np.testing.assert_allclose(np.load(two / f"record/{kind}.npy"), single, atol=1e-5)
    # Steering, specificity and everything reported on them.
    results = [json.loads((run / "results.json").read_text()) for run in one_and_two]
    assert _stable(results[0]) == _stable(results[1])
    bounds = [json.loads((run / "bound/bound.json").read_text()) for run in one_and_two]
    assert _stable(bounds[0]) == _stable(bounds[1])
    # The main process wrote the folder; the other left no scratch behind.
    assert {p.name for p in two.iterdir()} == {p.name for p in one.iterdir()}


def test_alone_parallel_map_is_map() -> None:
    assert distributed.world_size() == 1 and distributed.is_main()
    assert list(distributed.parallel_map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
    assert distributed.gather(3) == [3] and distributed.from_main("a") == "a"
