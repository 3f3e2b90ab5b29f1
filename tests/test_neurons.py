"""Neuron scorers and global top-N selection, checked against plain numpy references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memgen.core.artifacts import Stage, write_json
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.core.neuron_set import NeuronSet
from memgen.core.recorded import read_record
from memgen.neurons.scores import SCORERS, score
from memgen.neurons.selection import layer_counts, layer_share, n_selected, select_top
from memgen.pipeline import run_stage


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 5)).astype(np.float32)
    y = np.repeat([1, 0], 20)
    x[y == 1, 2, 1] += 1.5  # one neuron that leans mem
    return x, y


def test_nmd_matches_numpy(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    expected = x[y == 1].astype(np.float64).mean(0) - x[y == 0].astype(np.float64).mean(0)
    np.testing.assert_allclose(score("nmd", x, y), expected, rtol=1e-10, atol=1e-12)


def test_pearson_matches_corrcoef_per_neuron(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    expected = np.empty(x.shape[1:])
    for layer in range(x.shape[1]):
        for neuron in range(x.shape[2]):
            expected[layer, neuron] = np.corrcoef(x[:, layer, neuron], y)[0, 1]
    np.testing.assert_allclose(score("pearson", x, y), expected, rtol=1e-9, atol=1e-12)
    assert np.unravel_index(np.abs(expected).argmax(), expected.shape) == (2, 1)


def test_t_and_auroc_match_scipy(data: tuple[np.ndarray, np.ndarray]) -> None:
    from scipy.stats import mannwhitneyu, ttest_ind

    x, y = data
    t = score("t", x, y)
    auc = score("auroc", x, y)
    for layer, neuron in [(0, 0), (2, 1), (1, 4)]:
        a, b = x[y == 1, layer, neuron], x[y == 0, layer, neuron]
        assert t[layer, neuron] == pytest.approx(ttest_ind(a, b, equal_var=False).statistic)
        u = mannwhitneyu(a, b).statistic
        assert auc[layer, neuron] == pytest.approx(2 * u / (len(a) * len(b)) - 1)


def test_constant_neuron_scores_zero_not_nan(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    x = x.copy()
    x[:, 0, 3] = 0.1  # 0.1 is inexact in binary: the mean leaves a residue
    for name in SCORERS.names():
        result = score(name, x, y)
        assert np.isfinite(result).all(), name
        assert result[0, 3] == pytest.approx(0.0, abs=1e-12), name


@pytest.mark.parametrize("name", ["nmd", "pearson", "t", "auroc"])
def test_scores_unchanged_when_rows_permuted(
    data: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    x, y = data
    order = np.random.default_rng(1).permutation(len(y))
    np.testing.assert_allclose(score(name, x[order], y[order]), score(name, x, y), atol=1e-10)


def test_two_dimensional_input_and_blocks(
    data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = data
    whole = score("pearson", x, y)
    flat = score("pearson", x.reshape(len(x), -1), y)
    np.testing.assert_allclose(flat, whole.ravel())
    # Tiny blocks: the blockwise loop must give the same answer as one block.
    monkeypatch.setattr("memgen.neurons.scores._BLOCK_BYTES", 8 * len(x) * 2)
    np.testing.assert_allclose(score("pearson", x, y), whole)


def test_bad_labels_and_unknown_scorer(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    with pytest.raises(MemgenError, match="one behaviour"):
        score("nmd", x, np.ones_like(y))
    with pytest.raises(MemgenError, match="rows"):
        score("nmd", x, y[:-1])
    with pytest.raises(MemgenError, match="did you mean 'pearson'"):
        score("pearson_r", x, y)


def test_select_top_is_global_top_fraction() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 50))
    layers, neurons = select_top(s, 0.1)
    assert len(layers) == n_selected(0.1, s.size) == 20
    chosen = np.abs(s[layers, neurons])
    rest = np.ones_like(s, dtype=bool)
    rest[layers, neurons] = False
    assert chosen.min() >= np.abs(s[rest]).max()
    assert list(chosen) == sorted(chosen, reverse=True)  # strongest first


def test_select_top_ranks_by_absolute_value_across_layers() -> None:
    s = np.zeros((3, 10))
    s[2, 4] = -5.0
    s[0, 7] = 4.0
    s[1, 1] = 0.5
    layers, neurons = select_top(s, 2 / 30)
    assert list(zip(layers.tolist(), neurons.tolist(), strict=True)) == [(2, 4), (0, 7)]


def test_layer_shares_sum_to_one() -> None:
    layers = np.array([0, 2, 2, 3, 3, 3])
    assert layer_counts(layers, 5).tolist() == [1, 0, 2, 3, 0]
    share = layer_share(layers, 5)
    assert share.sum() == pytest.approx(1.0)
    assert share[3] == pytest.approx(0.5)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(MemgenError, match="top_n"):
        select_top(np.ones((2, 3)), fraction)


def write_record(run_dir: Path, n_pairs: int = 30, seed: int = 0) -> None:
    """A finished `record` folder: 3-layer resid [N, 3, 16] with mem signal in layer 2."""
    rng = np.random.default_rng(seed)
    out = Stage(run_dir, "record").begin()
    y = np.tile([1, 0], n_pairs)
    resid = rng.normal(size=(2 * n_pairs, 3, 16)).astype(np.float32)
    resid[y == 1, 2, :4] += 2.0
    np.save(out / "resid.npy", resid)
    model = {"model_type": "gpt2", "num_hidden_layers": 3, "hidden_size": 16, "name_or_path": "x"}
    index = {
        "labels": y.tolist(),
        "pair_ids": np.repeat(np.arange(n_pairs), 2).tolist(),
        "sites": {"resid": {"n_layers": 3, "width": 16}},
        "model": model,
    }
    write_json(out / "index.json", index)
    Stage(run_dir, "record").finish({}, [], 0)


def test_neurons_stage_writes_its_files(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    write_record(tmp_path)
    cfg = load_config(None, ["neurons.top_n=[0.05,0.1]"])
    stage = run_stage("neurons", tmp_path, cfg)
    out = stage.path
    for name in (
        "scores.safetensors",
        "top5.json",
        "top5.safetensors",
        "top10.json",
        "consistency.json",
        "nmd_sorted.png",
        "layer_share.png",
        "score_by_layer.png",
    ):
        assert (out / name).is_file(), name
    summary = stage.manifest()["summary"]
    assert np.argmax(summary["mean_abs_nmd"]) == 2
    assert summary["layer_share"]["top5"][2] == pytest.approx(1.0)  # 2 of 48, both planted
    top10 = NeuronSet.load(out / "top10")
    assert len(top10) == 5 and set(top10.layers.tolist()) == {2}
    assert (top10.nmd > 0).all()
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    top10.check_compatible(model)
    report = json.loads((out / "consistency.json").read_text())
    assert report["top_n"][1]["jaccard"]["mean"] > report["top_n"][1]["jaccard_chance"]
    manifest = stage.manifest()
    assert run_stage("neurons", tmp_path, cfg).manifest() == manifest  # up to date: skipped


def test_neurons_stage_errors(tmp_path: Path) -> None:
    with pytest.raises(MemgenError, match="memgen record"):
        run_stage("neurons", tmp_path, load_config())
    write_record(tmp_path)
    with pytest.raises(MemgenError, match="site 'mlp' was not recorded"):
        run_stage("neurons", tmp_path, load_config(None, ["neurons.site=mlp"]))
    with pytest.raises(MemgenError, match="did you mean"):
        run_stage("neurons", tmp_path, load_config(None, ["neurons.scorer=pearsn"]))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_activation_file_is_a_one_line_error(tmp_path: Path, damage: str) -> None:
    write_record(tmp_path)
    path = tmp_path / "record" / "resid.npy"
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:40])
    with pytest.raises(MemgenError, match=r"not a readable \.npy") as info:
        read_record(tmp_path / "record").activations("resid")
    assert "\n" not in str(info.value)


def test_nmd_in_sd_units_is_nmd_over_each_neurons_sd() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (40, 2, 5)) * np.array([1.0, 50.0])[None, :, None]
    y = np.tile([1, 0], 20)
    x[:, 0, 4] = 2.0  # constant: scores 0
    expected = score("nmd", x, y) / x.std(axis=0, ddof=1)
    expected[0, 4] = 0.0
    np.testing.assert_allclose(score("nmd_sd", x, y), expected, rtol=1e-10, atol=1e-12)
    # Scaling a layer by 50 moves raw NMD by 50 and NMD in sd units not at all.
    scaled = x.copy()
    scaled[:, 1] /= 50.0
    np.testing.assert_allclose(score("nmd_sd", scaled, y), score("nmd_sd", x, y), rtol=1e-9)
