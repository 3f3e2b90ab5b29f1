"""The per-memory deletion matrix: its statistics on matrices whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from memgen.delete.matrix import _own_most, relabelled_p_value


def test_a_planted_diagonal_is_found_and_a_flat_matrix_is_not() -> None:
    n = 8
    own = np.ones((n, n)) - 0.9 * np.eye(n)  # each memory's neurons forget it alone
    assert relabelled_p_value(own, 999, seed=0) == pytest.approx(1 / 1000)  # 1/n! of ties
    assert _own_most(own) == 1.0
    flat = np.full((n, n), 0.7)  # neurons shared by every memory
    assert relabelled_p_value(flat, 999, seed=0) == 1.0
    assert _own_most(flat) == pytest.approx(1 / n)


def test_the_relabelled_p_value_is_uniform_on_matrices_without_structure() -> None:
    rng = np.random.default_rng(0)
    p = [relabelled_p_value(rng.random((6, 6)), 199, seed=s) for s in range(200)]
    assert 0.03 <= np.mean(np.asarray(p) <= 0.05) <= 0.09  # about 5% below 0.05
    assert 0.4 <= np.mean(p) <= 0.6
