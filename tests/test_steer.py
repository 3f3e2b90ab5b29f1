"""The public steering API, steering files, the methods and their controls."""

import json
import shutil
from collections.abc import Callable

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

import memgen
from conftest import HIDDEN, LAYERS
from memgen.core.errors import MemgenError
from memgen.core.hooks import intervene, record
from memgen.core.modeling import model_identity
from memgen.core.neuron_set import NeuronSet
from memgen.core.sites import Site
from memgen.steering.methods import (
    METHODS,
    SiteStats,
    activation_scale,
    layer_masks,
    matched_masks,
    paper_control,
    random_like,
    shift_size,
)
from memgen.steering.saved import Steering, load_steering
from memgen.steering.shifts import generate_shifted
from memgen.steering.tuning import Bounds, Candidate, Tried, choose, ranked, tune


def _neuron_set(model: PreTrainedModel, layers: list[int], neurons: list[int]) -> NeuronSet:
    rng = np.random.default_rng(0)
    return NeuronSet(
        model=model_identity(model), site="resid", scorer="pearson", top_n=0.1,
        n_layers=LAYERS, width=HIDDEN, layers=np.array(layers), neurons=np.array(neurons),
        nmd=rng.normal(0, 1, len(layers)).astype(np.float32),
        score=rng.uniform(0.5, 1, len(layers)).astype(np.float32),
    )  # fmt: skip


def _resid(model: PreTrainedModel, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    sites = [Site("resid", layer) for layer in range(LAYERS)]
    with torch.no_grad(), record(model, sites, position="all") as rec:
        model(input_ids=ids)
    return {layer: rec[Site("resid", layer)] for layer in range(LAYERS)}


@pytest.mark.parametrize("toward", ["gen", "mem"])
def test_steer_shifts_exactly_the_selected_neurons_at_the_last_position(
    make_tiny: Callable[..., PreTrainedModel], token_ids: torch.Tensor, toward: str
) -> None:
    model = make_tiny("gpt2")
    both = _neuron_set(model, [0, 1], [3, 7])  # one neuron per layer
    first = _neuron_set(model, [0], [3])  # the same shift at layer 0 alone
    first = NeuronSet(**{**vars(first), "nmd": both.nmd[:1], "score": both.score[:1]})
    base = _resid(model, token_ids)
    with memgen.steer(model, first, alpha=3.0, toward=toward):  # type: ignore[arg-type]
        steered_first = _resid(model, token_ids)
    with memgen.steer(model, both, alpha=3.0, toward=toward):  # type: ignore[arg-type]
        steered_both = _resid(model, token_ids)
    sign = 1.0 if toward == "mem" else -1.0
    # Layer 0: only neuron 3, only at the last position.
    expected = torch.zeros_like(base[0])
    expected[:, -1, 3] = sign * 3.0 * float(both.nmd[0])
    torch.testing.assert_close(steered_first[0] - base[0], expected, atol=1e-5, rtol=0)
    # Layer 1 sees layer 0's shift downstream; on top of that, its own shift of neuron 7.
    expected = torch.zeros_like(base[1])
    expected[:, -1, 7] = sign * 3.0 * float(both.nmd[1])
    torch.testing.assert_close(steered_both[1] - steered_first[1], expected, atol=1e-5, rtol=0)


def test_steer_removes_its_hooks_and_refuses_other_models(
    make_tiny: Callable[..., PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = make_tiny("gpt2")
    neurons = _neuron_set(model, [0, 1], [1, 2])
    with (
        pytest.raises(RuntimeError, match="boom"),
        memgen.steer(model, neurons, alpha=1.0, toward="gen"),
    ):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    other = make_tiny("llama")
    with (
        pytest.raises(MemgenError, match="made for"),
        memgen.steer(other, neurons, alpha=1.0, toward="gen"),
    ):
        pass
    with (
        pytest.raises(MemgenError, match="toward"),
        memgen.steer(model, neurons, alpha=1.0, toward="sideways"),  # type: ignore[arg-type]
    ):
        pass
    with pytest.raises(MemgenError, match="alpha= and toward="), memgen.steer(model, neurons):
        pass


def test_steered_generate_on_a_lora_model(
    tiny_lora_models: dict[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = tiny_lora_models["llama"]
    neurons = _neuron_set(model, [0, 1, 1], [0, 5, 9])
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    plain = model.generate(input_ids=token_ids, **kwargs, output_scores=True,
                           return_dict_in_generate=True)  # fmt: skip
    with memgen.steer(model, neurons, alpha=50.0, toward="mem"):
        steered = model.generate(input_ids=token_ids, **kwargs, output_scores=True,
                                 return_dict_in_generate=True)  # fmt: skip
    for before, after in zip(plain.scores, steered.scores, strict=True):
        assert not torch.allclose(before, after)


def _stats(n_layers: int = 3, width: int = 20, rows: int = 200) -> SiteStats:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (rows, n_layers, width)) * rng.uniform(0.5, 3, (1, n_layers, width))
    labels = np.arange(rows) % 2
    x[labels == 1, :, :4] += 1.5  # four neurons per layer lean memorization
    sd, mean_norm = activation_scale(x)
    nmd = x[labels == 1].mean(0) - x[labels == 0].mean(0)
    return SiteStats("resid", x, labels, nmd, sd, mean_norm)


def test_paper_controls_match_count_and_shift_sizes() -> None:
    rng = np.random.default_rng(0)
    stats = _stats()
    score = rng.uniform(-1, 1, stats.shape)
    chosen = np.argsort(-np.abs(score).ravel())[:6]
    mask = np.zeros(stats.shape, dtype=bool)
    mask.ravel()[chosen] = True
    shift = METHODS.get("nmd").sparse(stats, mask[None], 2.0, "gen", None)[0]  # type: ignore[misc]
    sizes = sorted(np.abs(shift[mask]))
    for kind in ("random", "low_correlation"):
        control = paper_control(kind, shift, score, stats.nmd, "gen", rng)
        assert np.count_nonzero(control) == 6
        np.testing.assert_allclose(sorted(np.abs(control[control != 0])), sizes, rtol=1e-12)
        assert not (control != 0)[mask].any()
    low = paper_control("low_correlation", shift, score, stats.nmd, "gen", rng)
    lowest = set(np.argsort(np.abs(score).ravel())[:6].tolist())
    assert set(np.flatnonzero(low.ravel()).tolist()) == lowest
    # Toward gen, each low-correlation neuron moves against its own NMD.
    moved = low != 0
    assert (np.sign(low[moved]) == -np.sign(stats.nmd[moved])).all()
    with pytest.raises(MemgenError, match="unknown control"):
        paper_control("sideways", shift, score, stats.nmd, "gen", rng)


def test_matched_masks_keep_the_count_per_layer_and_avoid_the_selection() -> None:
    mask = np.zeros((3, 20), dtype=bool)
    mask[0, :5] = True
    mask[2, [1, 7]] = True
    drawn = matched_masks(mask, 6, np.random.default_rng(0))
    assert drawn.shape == (6, 3, 20)
    np.testing.assert_array_equal(drawn.sum(axis=2), np.tile(mask.sum(axis=1), (6, 1)))
    assert not (drawn & mask[None]).any()
    assert len({d.tobytes() for d in drawn}) == 6  # the draws differ


def test_nmd_controls_push_as_hard_as_the_selection_through_random_neurons() -> None:
    # The selection holds neurons that lean memorization; random neurons' own NMD is far
    # smaller, so the same treatment alone would push them by another amount.
    stats, rng = _stats(), np.random.default_rng(0)
    mask = np.zeros(stats.shape, dtype=bool)
    mask[0, :4] = mask[2, :3] = True
    for name in ("nmd", "nmd_sd"):
        method = METHODS.get(name)
        chosen = method.sparse(stats, mask[None], 2.0, "gen", None)[0]  # type: ignore[misc]
        drawn = method.matched(stats, chosen, mask, 2.0, "gen", 5, rng)
        assert method.control_kind.endswith("at the same norm per layer")
        np.testing.assert_array_equal((drawn != 0).sum(axis=2), np.tile([4, 0, 3], (5, 1)))
        assert not ((drawn != 0) & mask[None]).any()
        np.testing.assert_allclose(
            np.linalg.norm(drawn, axis=2), np.tile(np.linalg.norm(chosen, axis=1), (5, 1))
        )
        unscaled = method.sparse(stats, (drawn != 0), 2.0, "gen", None)  # type: ignore[misc]
        # The rescaling matters: unscaled, nmd's draws push less, nmd_sd's (calibrated on
        # their own small NMD) more.
        ratio = np.linalg.norm(unscaled) / np.linalg.norm(drawn)
        assert ratio < 0.5 if name == "nmd" else ratio > 1.2
        moved = drawn != 0
        assert (np.sign(drawn[moved]) == -np.sign(stats.nmd[np.nonzero(moved)[1:]])).all()
    # A fitted method's budget already matches the push: its control is fitted, not rescaled.
    fitted = METHODS.get("fitted")
    drawn = fitted.matched(stats, mask * 1.0, mask, 3.0, "gen", 2, rng, fit=lambda m, b, t: m * b)
    np.testing.assert_array_equal(drawn, (drawn != 0) * 3.0)
    assert fitted.control_kind.endswith("same treatment")
    assert not (fitted.controlled_by_directions or method.controlled_by_directions)


def test_fitted_layer_moves_whole_layers_and_its_control_matches_each_layers_norm() -> None:
    masks = layer_masks((3, 5))
    assert masks.shape == (3, 3, 5)
    np.testing.assert_array_equal(masks.sum(axis=2), np.eye(3) * 5)  # mask l: all of layer l
    shift = np.zeros((3, 5))
    shift[1] = [3.0, -4.0, 0.0, 0.0, 0.0]  # norm 5 at layer 1 alone
    drawn = random_like(shift, 4, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(drawn, axis=2), np.tile([0.0, 5.0, 0.0], (4, 1)))
    cosines = drawn[:, 1] @ shift[1] / 25
    assert np.all(np.abs(cosines) < 0.99) and len(set(np.round(cosines, 6))) == 4
    layer = METHODS.get("fitted_layer")
    assert layer.whole_layers and layer.grid == "budgets" and layer.controlled_by_directions
    assert layer.control_kind == "random direction at the layer, same norm, not fitted"


def test_calibrated_nmd_moves_the_median_neuron_by_its_size_in_sds() -> None:
    stats = _stats()
    masks = np.zeros((2, *stats.shape), dtype=bool)
    masks[0, 0, :4] = True
    masks[1, 1, 2:9] = True
    shifts = METHODS.get("nmd_sd").sparse(stats, masks, np.array([0.5, 2.0]), "mem", None)  # type: ignore[misc]
    for mask, shift, size in zip(masks, shifts, (0.5, 2.0), strict=True):
        assert np.median(np.abs(shift[mask]) / stats.sd[mask]) == pytest.approx(size)
        assert not shift[~mask].any()
        assert (np.sign(shift[mask]) == np.sign(stats.nmd[mask])).all()  # toward mem: +NMD
    raw = METHODS.get("nmd").sparse(stats, masks, 3.0, "gen", None)  # type: ignore[misc]
    np.testing.assert_allclose(raw[0][masks[0]], -3.0 * stats.nmd[masks[0]])


def test_dense_methods_and_their_random_directions() -> None:
    stats = _stats()
    for name in ("mean_diff", "probe"):
        method = METHODS.get(name)
        assert method.controlled_by_directions and "not fitted" in method.control_kind
        shift = method.dense_shifts(stats, [1], 2.0, "mem")[0]
        assert np.flatnonzero(np.abs(shift).sum(axis=1)).tolist() == [1]
        # The direction leans mem: mem rows project higher on it than gen rows.
        x = np.asarray(stats.activations[:, 1])
        projection = x @ shift[1]
        assert projection[stats.labels == 1].mean() > projection[stats.labels == 0].mean()
        controls = method.dense_shifts(stats, [1, 1], 2.0, "mem", np.random.default_rng(1))
        assert not np.allclose(controls[0], controls[1])
        if name == "mean_diff":  # a random direction of the same length
            np.testing.assert_allclose(np.linalg.norm(controls[:, 1], axis=1),
                                       np.linalg.norm(shift[1]))  # fmt: skip
        else:  # probe: alpha x the sd along its own direction
            for control in controls:
                unit = control[1] / np.linalg.norm(control[1])
                assert np.linalg.norm(control[1]) == pytest.approx(2.0 * np.std(x @ unit))


def test_shift_size_against_a_plain_numpy_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (300, 3, 8)) * np.array([1.0, 2.0, 4.0])[None, :, None]
    sd, mean_norm = activation_scale(x, chunk=64)  # chunks that do not divide 300
    np.testing.assert_allclose(sd, x.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(mean_norm, np.linalg.norm(x, axis=2).mean(axis=0), rtol=1e-10)
    stats = SiteStats("resid", x, np.arange(300) % 2, np.zeros((3, 8)), sd, mean_norm)
    shift = np.zeros((3, 8))
    shift[0, 5], shift[2, 1], shift[2, 7] = 1.5, -3.0, 6.0
    found = shift_size(shift, stats)
    moved = shift != 0
    assert found["sd"] == pytest.approx(np.median(np.abs(shift[moved]) / sd[moved]))
    per_layer = [1.5 / mean_norm[0], np.linalg.norm([3.0, 6.0]) / mean_norm[2]]
    assert found["relative_norm"] == pytest.approx(max(per_layer))


def test_layer_and_write_units_give_every_neuron_of_a_layer_one_push() -> None:
    stats = _stats()
    stats.sd[1, 3] = 0.0  # a dead neuron takes the median spread, as in `unit`
    unit, layer = stats.unit(), stats.layer_unit()
    assert layer.shape == stats.shape and (layer > 0).all()
    np.testing.assert_allclose(layer, np.repeat(unit.mean(axis=1, keepdims=True), 20, axis=1))
    assert np.ptp(unit, axis=1).min() > 0 and np.ptp(layer, axis=1).max() == 0
    writes = np.random.default_rng(1).uniform(0.5, 2.0, stats.shape)
    per_write = stats.write_unit(writes) * writes  # one unit moves the residual stream ...
    np.testing.assert_allclose(np.ptp(per_write, axis=1), 0, atol=1e-12)  # ... as far for all
    np.testing.assert_allclose(per_write[:, 0], layer[:, 0] * writes.mean(axis=1))


@pytest.mark.parametrize("position", ["last", "prompt"])
def test_batched_shifts_match_one_steering_at_a_time(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, object], position: str
) -> None:
    """Each row of a batch with its own shift generates what that shift alone does."""
    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = [
        "Bob is cat . Eve is cat . Eve is red . what color is Bob ?",
        "Ivy is owl . what color is Ivy ?",
        "Kate is bat . what color is Kate ?",
    ]
    rng = np.random.default_rng(0)
    shifts = np.zeros((3, 2, 32))
    shifts[1, 0, :6] = rng.normal(0, 4, 6)
    shifts[2, 1] = rng.normal(0, 2, 32)
    batched = generate_shifted(model, tokenizer, prompts, shifts, "resid", position,
                               max_new_tokens=5, batch_size=4)  # fmt: skip
    identity = model_identity(model)
    for k, shift in enumerate(shifts):
        steering = Steering(identity, "resid", position, shift)
        with memgen.steer(model, steering):
            alone = memgen_generate(model, tokenizer, prompts)
        assert batched[k] == alone
    assert batched[1] != batched[0] or batched[2] != batched[0]  # the shifts do something


def memgen_generate(model: PreTrainedModel, tokenizer: object, prompts: list[str]) -> list[str]:
    from memgen.core.generation import generate

    return generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1)  # type: ignore[arg-type]


def test_the_prompt_position_steers_the_prompt_only(
    make_tiny: Callable[..., PreTrainedModel], token_ids: torch.Tensor
) -> None:
    model = make_tiny("gpt2")
    shift = np.zeros((LAYERS, HIDDEN))
    shift[1, :3] = 5.0
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0,
              "output_scores": True, "return_dict_in_generate": True}  # fmt: skip
    plain = model.generate(input_ids=token_ids, **kwargs)
    results = {}
    for position in ("last", "prompt"):
        with memgen.steer(model, Steering(model_identity(model), "resid", position, shift)):
            results[position] = model.generate(input_ids=token_ids, **kwargs)
    # The first token's scores come from the prompt pass: both positions change them alike.
    torch.testing.assert_close(results["prompt"].scores[0], results["last"].scores[0])
    assert not torch.allclose(results["prompt"].scores[0], plain.scores[0])
    # A pass over one position is a cached decoding step: "prompt" leaves it alone.
    prompt_only = Steering(model_identity(model), "resid", "prompt", shift).interventions()
    with torch.no_grad():
        one = model(input_ids=token_ids[:, :1]).logits
        many = model(input_ids=token_ids).logits
        with intervene(model, prompt_only):
            torch.testing.assert_close(model(input_ids=token_ids[:, :1]).logits, one)
            assert not torch.allclose(model(input_ids=token_ids).logits[:, -1], many[:, -1])


def test_a_steering_file_round_trips_and_refuses_another_model(
    make_tiny: Callable[..., PreTrainedModel], tmp_path: object
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    model = make_tiny("gpt2")
    shift = np.zeros((LAYERS, HIDDEN))
    shift[0, [2, 9]] = [0.5, -1.25]
    saved = Steering(model_identity(model), "resid", "prompt", shift, {"method": "fitted"})
    saved.save(folder / "best")
    loaded = load_steering(folder / "best.json")
    assert loaded.position == "prompt" and loaded.meta == {"method": "fitted"}
    assert loaded.interventions() == saved.interventions()
    assert loaded.interventions()[0].neurons == (2, 9)
    with pytest.raises(MemgenError, match="made for"), memgen.steer(make_tiny("llama"), loaded):
        pass
    with pytest.raises(MemgenError, match="carries its own"), memgen.steer(model, loaded, alpha=1):
        pass
    info = json.loads((folder / "best.json").read_text())
    (folder / "odd.json").write_text(json.dumps({**info, "position": "first"}))
    shutil.copyfile(folder / "best.safetensors", folder / "odd.safetensors")
    with pytest.raises(MemgenError, match="position 'first' is not one of last, prompt, all"):
        load_steering(folder / "odd")
    (folder / "best.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MemgenError, match="corrupt"):
        load_steering(folder / "best")
    with pytest.raises(MemgenError, match="no steering file"):
        load_steering(folder / "missing")
    with pytest.raises(MemgenError, match="finite"):
        Steering(model_identity(model), "resid", "last", np.full((2, 3), np.nan))


def _tried(name: str, labels: str, push: float) -> Tried:
    candidate = Candidate("nmd", name, 1.0, np.zeros((LAYERS, HIDDEN)))
    return Tried(
        candidate, "last", [{"g": "gen", "m": "mem", "o": "other"}[c] for c in labels], push
    )


def test_the_choice_ranks_by_target_then_push_and_asks_retention_only_as_needed() -> None:
    tried = [
        _tried("noisy", "ggggoo", 0.1),  # the most gen, but `other` 1/3 is out of bounds
        _tried("strong", "gggggm", 0.9),
        _tried("gentle", "gggggm", 0.2),  # as much gen as "strong", with a smaller push
        _tried("weak", "ggmmmm", 0.1),
    ]
    assert [t.candidate.selection for t in ranked(tried, "gen", max_other=0.2)] == [
        "gentle",
        "strong",
        "weak",
        "noisy",
    ]
    asked: list[str] = []

    def retention(settings: list[Tried]) -> list[float]:
        asked.extend(t.candidate.selection for t in settings)
        return [
            {"gentle": 0.5, "strong": 0.99, "weak": 1.0}[t.candidate.selection] for t in settings
        ]

    pick = choose(tried, "gen", max_other=0.2, min_retention=0.95, retention=retention, chunk=2)
    assert pick.candidate.selection == "strong"  # "gentle" breaks too many kept answers
    assert asked == ["gentle", "strong"]  # "weak" was never measured
    # Nothing within bounds: the largest target share, bounds ignored.
    pick = choose(tried[:1], "gen", max_other=0.2, min_retention=0.95, retention=retention)
    assert pick.candidate.selection == "noisy"


class _Scripted:
    """Stands in for the generating bench in a test of the screening logic alone: setting i
    (its shift's first value) answers prompt j with `script[i][j]`. Generation itself is
    tested against a real model above."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls: list[tuple[list[int], int]] = []

    def labels(self, examples: list[object], shifts: np.ndarray, position: str) -> list[list[str]]:
        rows = [int(shift[0, 0]) for shift in shifts]
        first = int(examples[0].prompt)  # type: ignore[attr-defined]
        self.calls.append((rows, len(examples)))
        code = {"g": "gen", "m": "mem", "o": "other"}
        return [[code[self.script[i][first + j]] for j in range(len(examples))] for i in rows]


def test_screening_goes_on_down_the_ranking_until_a_setting_meets_the_bounds() -> None:
    from memgen.core.examples import Example

    script = [
        "gggg" + "gggggg",  # best screened; fails retention
        "gggg" + "ggggmm",  # fails retention
        "gggm" + "gggggm",  # meets the bounds
        "gggm" + "ggggoo",  # too much `other` on the whole split
        "ggmm" + "gggggg",  # never completed: ranked below a setting that meets them
        "gmmm" + "gggggg",
    ]  # fmt: skip
    candidates = [Candidate("nmd", f"s{i}", 1.0, np.full((1, 1), float(i))) for i in range(6)]
    tuning = [Example(str(j), "", "", "", {}) for j in range(10)]
    bench = _Scripted(script)
    kept = {"s0": 0.5, "s1": 0.5, "s2": 1.0, "s3": 1.0}

    def retention(settings: list[Tried]) -> list[float]:
        return [kept[t.candidate.selection] for t in settings]

    bounds = Bounds(max_other=0.1, min_retention=0.95, screen_prompts=4, screen_keep=2)
    pick, screened, finalists = tune(bench, candidates, ["last"], tuning, "gen", bounds,  # type: ignore[arg-type]
                                     retention, lambda shift: 0.0)  # fmt: skip
    assert pick.candidate.selection == "s2" and pick.rates["gen"] == 0.8
    assert [t.candidate.selection for t in finalists] == ["s0", "s1", "s2", "s3"]
    assert len(screened) == 6 and all(len(t.labels) == 4 for t in screened)
    assert bench.calls == [([0, 1, 2, 3, 4, 5], 4), ([0, 1], 6), ([2, 3], 6)]


def test_scales_at_kl_bring_each_shift_to_its_target_kl(
    tiny_gpt2_with_tokenizer: tuple[PreTrainedModel, object],
) -> None:
    """Each shift scaled to its own KL target: a weak shift grown past 1, a strong one
    shrunk, a zero target to ~0; a target no scale up to the ceiling reaches, or one that
    is not finite, gives NaN."""
    from memgen.steering.shifts import next_token_kl, scales_at_kl

    model, tokenizer = tiny_gpt2_with_tokenizer
    prompts = ["Ivy is owl . what color is Ivy ?", "Bob is cat . Eve is red . what color is Bob ?"]
    rng = np.random.default_rng(1)
    shifts = np.zeros((5, 2, 32))
    shifts[:, 0, :8] = rng.normal(0, 0.2, (5, 8))  # KL grows with the scale up to ~16 here
    at_one = next_token_kl(model, tokenizer, prompts, shifts, "resid")  # type: ignore[arg-type]
    wanted = np.array([1.5 * at_one[0], at_one[1] / 4, 1e6, 0.0, np.nan])
    got = scales_at_kl(model, tokenizer, prompts, shifts, wanted, "resid")  # type: ignore[arg-type]
    assert got[0] > 1 > got[1] > 0 and got[3] < 0.01
    assert np.isnan(got[2]) and np.isnan(got[4])
    # The KL at scale 1, where the caller has it, stands in for the first probe.
    given = scales_at_kl(model, tokenizer, prompts, shifts, wanted, "resid", at_one=at_one)  # type: ignore[arg-type]
    np.testing.assert_allclose(given, got, rtol=1e-6)
    unknown = scales_at_kl(
        model,
        tokenizer,
        prompts,
        shifts,
        wanted,
        "resid",
        at_one=np.where(np.arange(5) == 1, np.nan, at_one),
    )  # type: ignore[arg-type]
    assert np.isnan(unknown[1]) and unknown[0] == pytest.approx(got[0], rel=1e-6)
    reached = next_token_kl(model, tokenizer, prompts, shifts[:2] * got[:2, None, None], "resid")  # type: ignore[arg-type]
    # Interpolated inside a bracket of 1/64 of its start: within a few % of the target.
    np.testing.assert_allclose(reached, wanted[:2], rtol=0.03)
    with pytest.raises(MemgenError, match="one KL target per shift"):
        scales_at_kl(model, tokenizer, prompts, shifts, wanted[:2], "resid")  # type: ignore[arg-type]
