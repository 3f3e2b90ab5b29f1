"""The whole pipeline on a tiny model, the results schema, stage skipping and CLI errors."""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import Exited
from memgen.bound import stage as bound_stage
from memgen.core.artifacts import Stage
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.core.examples import read_jsonl, read_labelled, read_pairs
from memgen.core.modeling import load_trained
from memgen.core.recorded import read_record
from memgen.core.stats import rates
from memgen.neurons.attribution import site_score
from memgen.neurons.selection import n_selected, select_top
from memgen.pipeline import RUN_ORDER, STAGES, made_with, open_step, run_all, run_stage, upstream
from memgen.report.compare import compare_runs, format_table
from memgen.steering.bench import DIRECTIONS
from memgen.steering.saved import load_steering
from memgen.steering.shifts import generate_shifted, next_token_kl
from memgen.tasks import make_task
from memgen.train.loop import Decoder, evaluate

# A small context (2-3 names) and many pure-recall prompts make both behaviours appear
# early in training of a 2-layer model (the kept checkpoint shows about 20% gen, 30% mem).
TINY = [
    "data.n_train=3000", "data.n_test=80", "data.options.min_names=2",
    "data.options.max_names=3", "data.options.rule_fraction=0.3",
    "data.options.recall_fraction=0.4", "train.steps=400", "train.eval_every=50",
    "data.n_dev=60", "train.n_layer=2", "train.n_embd=64", "train.n_head=2", "train.lr=3e-3",
    "train.batch_size=32", "train.warmup_steps=20", "train.max_other=1.0",
    "behave.min_flips=10", "behave.max_pairs=3000", "behave.target_flips=40",
    "probe.folds=2", "probe.learning_curve=[5,10]", "neurons.top_n=[0.1]",
    "steer.alphas=[1,3]", "steer.n_prompts=40", "steer.n_side_effect=20", "steer.draws=2",
    "steer.sd_alphas=[0.5,1]", "steer.budgets=[2,4]", "steer.dense_alphas=[2]",
    "steer.fit_steps=20", "steer.screen_prompts=4", "steer.screen_keep=2",
    "specificity.sizes=[0.05,0.1]", "specificity.budgets=[4]", "specificity.draws=2",
    "behave.n_rule_check=100", "specificity.scorers=[pearson,attribution]",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    run_all(run_dir, load_config(None, TINY))
    return run_dir


@pytest.fixture
def own_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run for a test that changes it, so no test sees another's changes."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_results_follow_the_documented_schema(tiny_run: Path) -> None:
    results = json.loads((tiny_run / "results.json").read_text())
    assert set(results["behaviour"]["test_rates"]) == {"gen", "mem", "other"}
    assert sum(results["behaviour"]["test_rates"].values()) == pytest.approx(1.0)
    assert results["pairs"]["flipped"] >= 10
    rule = results["behaviour"]["rule_following"]  # color: is gen the rule or a copy?
    assert rule["n_prompts"] == 100 and 0 < rule["n"] <= 100 and 0 < rule["chance"] < 1
    assert rule["ci"][0] <= rule["share"] <= rule["ci"][1]
    assert results["splits"]["training"].startswith("dev")
    assert results["pairs"]["evaluated"] >= results["pairs"]["flipped"]
    layers = results["probe"]["per_layer"]
    assert {row["site"] for row in layers} == {"resid", "mlp"}
    for row in layers:
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert set(results["probe"]["best"]) >= {"layer", "site", "accuracy"}
    # The answer readout at the last layer is the greedy choice that labelled the pairs.
    readout = results["probe"]["readout"]
    assert [row["layer"] for row in readout] == [0, 1]
    assert readout[-1]["paired_accuracy"] == 1.0 and readout[-1]["accuracy"] == 1.0
    methods = {"nmd", "nmd_sd", "fitted", "fitted_layer", "mean_diff", "probe"}
    assert {(r["direction"], r["method"]) for r in results["steering"]} == {
        (d, m) for d in ("mem_to_gen", "gen_to_mem") for m in methods
    }
    for row in results["steering"]:
        target = "gen" if row["direction"] == "mem_to_gen" else "mem"
        assert row["split"] == "held_out" and row["position"] in ("last", "prompt")
        assert sum(row["targeted"].values()) == pytest.approx(1.0)
        low, high = row["ci"][target]
        assert low <= row["targeted"][target] <= high
        matched = row["controls"]["matched"]
        assert len(matched["target_per_draw"]) == 2 and sum(matched["rates"].values()) == 1.0
        ahead = sum(draw >= row["targeted"][target] for draw in matched["target_per_draw"])
        assert matched["p_value"] == pytest.approx((1 + ahead) / 3)  # 2 draws: p >= 1/3
        given = {kind for kind, rates in row["controls"].items() if rates is not None}
        assert given == (
            {"matched"} if row["method"] in ("mean_diff", "probe", "fitted_layer")
            else {"matched", "random", "low_correlation"}
        )  # fmt: skip
        assert set(row["side_effect"]) >= {"retention", "kl", "train_accuracy"}
        assert row["side_effect"]["kl"] >= 0 and row["shift"]["sd"] > 0
    for direction, best in results["steering_best"].items():
        assert best["file"] == f"best/{direction}"
    specificity = results["specificity"]
    assert {(r["site"], r["size"]) for r in specificity} == {
        (site, size) for site in ("resid", "mlp") for size in (0.05, 0.1)
    }
    assert all(len(r["matched_per_draw"]) == 2 for r in specificity)
    assert all(1 / 3 <= r["p_value"] <= 1 and r["matched_prediction"] for r in specificity)
    assert {r["scorer"] for r in specificity} == {"pearson", "attribution"}
    # The causal score beside the paper's: how much the two selections share.
    versus = Stage(tiny_run, "neurons").manifest()["summary"]["attribution_vs_score"]["top10"]
    assert 0 <= versus["jaccard"] <= 1 and -1 <= versus["spearman"] <= 1


def test_the_checkpoint_is_chosen_on_dev_prompts_that_are_not_test_prompts(
    tiny_run: Path,
) -> None:
    dev = read_jsonl(tiny_run / "data" / "dev.jsonl")
    test = read_jsonl(tiny_run / "data" / "test.jsonl")
    assert len(dev) == 60 and not {ex.prompt for ex in dev} & {ex.prompt for ex in test}
    # The kept model answers the dev prompts exactly as the evaluation that kept it recorded.
    model, tokenizer = load_trained(tiny_run / "train" / "model")
    task = make_task("color", load_config(None, TINY).data.options)
    shares = evaluate(model, tokenizer, task, dev, chat=False, decoder=Decoder())
    kept = json.loads((tiny_run / "results.json").read_text())["training"]["selected"]
    assert shares == pytest.approx({k: kept[k] for k in ("gen", "mem", "other")})


def test_steering_is_chosen_on_prompts_it_is_not_reported_on(tiny_run: Path) -> None:
    """Tuning and held-out prompts are disjoint test prompts, and only test prompts."""
    splits = json.loads((tiny_run / "steer" / "steering.json").read_text())["splits"]
    labelled = read_labelled(tiny_run / "behave" / "test_outputs.jsonl")
    results = json.loads((tiny_run / "results.json").read_text())
    for direction, (source, _) in DIRECTIONS.items():
        tuning, held_out = set(splits[direction]["tuning"]), set(splits[direction]["held_out"])
        assert tuning and held_out and not tuning & held_out
        assert all(labelled[i][1] == source for i in tuning | held_out)
        rows = [r for r in results["steering"] if r["direction"] == direction]
        assert all(r["n_prompts"] == len(held_out) for r in rows)
        assert all(r["tuning"]["n_prompts"] == len(tuning) for r in rows)
    # Every setting is screened on the first 4 tuning prompts, and the best per method, 2 at
    # a time, are measured on the whole tuning split; the chosen setting is one of those.
    sweep = json.loads((tiny_run / "steer" / "steering.json").read_text())["sweep"]
    for row in results["steering"]:
        tried = [
            s for s in sweep if (s["direction"], s["method"]) == (row["direction"], row["method"])
        ]
        screened = [s for s in tried if s["split"] == "screen"]
        finalists = [s for s in tried if s["split"] == "tuning"]
        assert len(screened) > 2 and all(s["n_prompts"] == 4 for s in screened)
        assert len(finalists) % 2 == 0 or len(finalists) == len(screened)
        assert 2 <= len(finalists) <= len(screened)
        assert all(s["n_prompts"] == row["tuning"]["n_prompts"] for s in finalists)
        assert any(
            (s["selection"], s["size"], s["position"])
            == (row["selection"], row["size"], row["position"])
            for s in finalists
        )


def test_a_best_steering_that_moves_nothing_is_said_to(
    own_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    idle = ["steer.methods=[nmd]", "steer.alphas=[1e-9]", "steer.positions=[last]"]
    with caplog.at_level("WARNING"):
        run_stage("steer", own_run, load_config(None, [*TINY, *idle]), force=True)
    best = json.loads((own_run / "steer" / "steering.json").read_text())["best"]
    assert best
    for direction, row in best.items():
        assert row["tuning"]["rates"][DIRECTIONS[direction][1]] == 0
        assert f"so best/{direction} does nothing" in caplog.text


def test_the_saved_best_steering_reproduces_its_rates_in_a_new_process(tiny_run: Path) -> None:
    steering = json.loads((tiny_run / "steer" / "steering.json").read_text())
    labelled = read_labelled(tiny_run / "behave" / "test_outputs.jsonl")
    task = make_task("color", load_config(None, TINY).data.options)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import memgen\n"
        "from memgen.core.generation import generate\n"
        "from memgen.core.modeling import load_trained\n"
        "run, direction, prompts = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])\n"
        "model, tokenizer = load_trained(run / 'train' / 'model')\n"
        "steering = memgen.load_steering(run / 'steer' / 'best' / direction)\n"
        "with memgen.steer(model, steering):\n"
        "    out = generate(model, tokenizer, prompts, max_new_tokens=int(sys.argv[4]))\n"
        "print(json.dumps(out))\n"
    )
    for direction, best in steering["best"].items():
        examples = [labelled[i][0] for i in steering["splits"][direction]["held_out"]]
        done = subprocess.run(
            [sys.executable, "-c", script, str(tiny_run), direction,
             json.dumps([ex.prompt for ex in examples]), str(task.max_new_tokens)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs = json.loads(done.stdout.strip().splitlines()[-1])
        found = rates(task.label(ex, out) for ex, out in zip(examples, outputs, strict=True))
        assert found == pytest.approx(best["targeted"])
        # The same answers as the stage's batched generation, and the shift reaches the
        # logits (a zero or unapplied shift gives KL exactly 0). How far it moves them
        # depends on which setting wins on this tiny model: on the machine and packages of
        # 2026-12-02 a probe direction at alpha 2 (KL 2e-5), earlier a stronger one.
        saved = load_steering(tiny_run / "steer" / "best" / direction)
        model, tokenizer = load_trained(tiny_run / "train" / "model")
        prompts = [ex.prompt for ex in examples]
        batched = generate_shifted(model, tokenizer, prompts, saved.shift[None], "resid",
                                   saved.position, max_new_tokens=task.max_new_tokens)  # fmt: skip
        assert batched[0] == outputs
        kl = next_token_kl(model, tokenizer, prompts, saved.shift[None], "resid")
        assert kl[0] > 0


def test_the_bound_stage_fits_each_layer_and_refuses_a_bad_one(own_run: Path) -> None:
    cfg = load_config(None, [*TINY, "bound.steps=5"])
    stage = run_stage("bound", own_run, cfg)
    rows = stage.manifest()["summary"]["rows"]
    assert rows and {row["layer"] for row in rows} == {0, 1}
    for row in rows:
        assert 0.0 <= row["fit"] <= 1.0
        assert sum(row["held_out"].values()) == pytest.approx(1.0)
        assert row["n_fit"] + row["n_held_out"] <= 2 * cfg.bound.n_prompts
    shifts = load_file(str(stage.path / "shifts.safetensors"))
    assert set(shifts) == {f"{row['direction']}/{row['site']}.{row['layer']}" for row in rows}
    assert all(vector.shape == (64,) for vector in shifts.values())
    with pytest.raises(MemgenError, match="out of range"):
        run_stage("bound", own_run, load_config(None, [*TINY, "bound.layers=[7]"]))


def test_a_stopped_bound_resumes_at_the_direction_it_stopped_in(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, [*TINY, "bound.steps=5"])
    whole = Path(shutil.copytree(tiny_run, tmp_path / "whole"))
    stopped = Path(shutil.copytree(tiny_run, tmp_path / "stopped"))
    run_stage("bound", whole, cfg)
    fit, fitted = bound_stage._LayerFits.direction, []

    def fit_one_then_stop(self: Any, direction: str, prompts: Any) -> Any:
        if fitted:
            raise KeyboardInterrupt
        fitted.append(direction)
        return fit(self, direction, prompts)

    monkeypatch.setattr(bound_stage._LayerFits, "direction", fit_one_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_stage("bound", stopped, cfg)

    def fit_and_count(self: Any, direction: str, prompts: Any) -> Any:
        fitted.append(direction)
        return fit(self, direction, prompts)

    monkeypatch.setattr(bound_stage._LayerFits, "direction", fit_and_count)
    run_stage("bound", stopped, cfg)
    assert len(fitted) == 2 and fitted[0] != fitted[1]  # the first direction was not refitted
    done, expected = stopped / "bound", whole / "bound"
    assert (done / "bound.json").read_text() == (expected / "bound.json").read_text()
    ours, theirs = (
        load_file(str(done / "shifts.safetensors")),
        load_file(str(expected / "shifts.safetensors")),
    )
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    assert not (done / "pieces").exists()


def test_ablation_scales_each_site_and_scale_one_changes_nothing(own_run: Path) -> None:
    cfg = load_config(None, [*TINY, "ablate.scales=[0,1]", "ablate.position=all"])
    stage = run_stage("ablate", own_run, cfg)
    result = json.loads((stage.path / "ablate.json").read_text())
    baseline, rows = result["baseline"], result["rows"]
    assert set(baseline) == {"mem", "gen"}  # the tiny run answers both ways
    expected = {(kind, layer, scale, source) for kind in ("attn", "mlp") for layer in (0, 1)
                for scale in (0.0, 1.0) for source in ("mem", "gen")}  # fmt: skip
    assert {(r["site"], r["layer"], r["scale"], r["from"]) for r in rows} == expected
    for row in rows:
        assert sum(row["shares"].values()) == pytest.approx(1.0)
        if row["scale"] == 1.0:  # multiplying by one must leave every answer as it was
            assert row["shares"] == baseline[row["from"]]
    # Knocking a whole layer's MLP out everywhere changes some answers: the hooks bite.
    knocked = [r for r in rows if r["scale"] == 0.0 and r["site"] == "mlp" and r["layer"] == 0]
    assert any(r["shares"] != baseline[r["from"]] for r in knocked)
    assert (stage.path / "ablate.png").stat().st_size > 0
    assert (
        run_stage("ablate", own_run, cfg).manifest() == stage.manifest()
    )  # skipped when up to date


def test_a_stopped_ablate_stage_resumes_from_its_finished_settings(
    own_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memgen.ablate.stage import Steerer

    cfg = load_config(None, [*TINY, "ablate.scales=[0]", "ablate.sites=[mlp]"])
    whole = Path(shutil.copytree(own_run, tmp_path / "whole"))
    expected = json.loads((run_stage("ablate", whole, cfg).path / "ablate.json").read_text())
    shares = Steerer.shares
    calls: list[int] = []

    def stopped_in_layer_1(self: Steerer, examples: list, interventions: list) -> object:
        calls.append(interventions[0].site.layer if interventions else -1)
        if calls[-1] == 1:
            raise KeyboardInterrupt
        return shares(self, examples, interventions)

    monkeypatch.setattr(Steerer, "shares", stopped_in_layer_1)
    with pytest.raises(KeyboardInterrupt):
        run_stage("ablate", own_run, cfg)
    stage = Stage(own_run, "ablate")
    assert not stage.is_finished()
    assert [p.name for p in (stage.path / "pieces").iterdir()] == ["mlp-0-x0.json"]
    calls.clear()
    monkeypatch.setattr(Steerer, "shares", lambda self, e, i: calls.append(1) or shares(self, e, i))
    result = json.loads((run_stage("ablate", own_run, cfg).path / "ablate.json").read_text())
    assert len(calls) == 2 + 2  # the baseline and layer 1, both ways; layer 0 read back
    assert result == expected
    assert not (stage.path / "pieces").exists()


def test_the_delete_stage_measures_each_selection_held_out_beside_matched_draws(
    own_run: Path,
) -> None:
    args = ["delete.draws=3", "delete.sizes=[0.05]", "delete.min_pairs=2"]
    cfg = load_config(None, [*TINY, *args])
    stage = run_stage("delete", own_run, cfg)
    result = json.loads((stage.path / "delete.json").read_text())
    rows, held = result["rows"], result["held_out"]
    dc = cfg.delete
    assert {(r["scorer"], r["ablation"]) for r in rows} == {
        (s, a) for s in dc.scorers for a in dc.ablations
    }
    pair_prompts = set(read_pairs(own_run / "behave" / "pairs.jsonl").prompts)
    answered = read_labelled(own_run / "behave" / "test_outputs.jsonl")
    fresh_mem = sum(label == "mem" and ex.prompt not in pair_prompts for ex, label in answered)
    assert 0 < held["mem"] <= fresh_mem  # held out: no pair prompt is measured
    for row in rows:
        assert row["k"] == sum(row["per_layer"]) == n_selected(0.05, 2 * 256)
        assert len(row["random"]) == dc.draws and row["n_mem"] == held["mem"]
        assert 1 / (1 + dc.draws) <= row["p_value"] <= 1.0
        kept = row["deleted"]
        assert 0 <= kept["to_rule"] <= 1 - kept["mem_kept"] + 1e-9  # a flip leaves memory
        assert row["mem_kept_ci"][0] <= kept["mem_kept"] <= row["mem_kept_ci"][1]
    for matrix in result["matrices"]:
        n = len(matrix["memories"])
        assert n >= 2 and len(matrix["kept"]) == n and all(len(r) == n for r in matrix["kept"])
        assert 0 < matrix["p_value"] <= 1.0 and matrix["chance"] == pytest.approx(1 / n)
    run_stage("report", own_run, cfg)
    results = json.loads((own_run / "results.json").read_text())
    assert results["deletion"]["rows"] == rows
    page = (own_run / "report" / "report.html").read_text()
    assert "memgen delete" in page and "Memorized and rule answers kept over set size" in page
    assert (stage.path / "delete.png").is_file()
    # `memgen compare` lines the runs' deletion rows up (here a run and its copy).
    copy = Path(shutil.copytree(own_run, own_run.parent / "copy"))
    comparison = compare_runs([own_run, copy])
    deletion = comparison["deletion"]
    assert len(deletion["matrices"]) == len(result["matrices"])
    for row, across in zip(rows, deletion["rows"], strict=True):
        assert across["task"] == "color" and across["scorer"] == row["scorer"]
        assert across["size"] == row["size"] and across["ablation"] == row["ablation"]
        assert across["control"] == row["control"] == "layer"
        assert [c["mem_kept"] for c in across["runs"]] == [row["deleted"]["mem_kept"]] * 2
        assert [c["p_value"] for c in across["runs"]] == [row["p_value"]] * 2
        assert across["mem_kept"]["sd"] == 0.0
    assert "deletion: memory kept" in format_table(comparison)


def test_specificity_budgets_in_write_units_fit_every_cell(own_run: Path) -> None:
    args = ["specificity.units=write", "specificity.sites=[mlp]", "specificity.sizes=[0.05,0.2]"]
    cfg = load_config(None, [*TINY, *args])
    rows = json.loads(
        (run_stage("specificity", own_run, cfg).path / "specificity.json").read_text()
    )
    assert {(r["scorer"], r["direction"]) for r in rows["rows"]} == {
        (s, d) for s in ("pearson", "attribution") for d in DIRECTIONS
    }
    assert all(len(r["matched_per_draw"]) == 2 and r["n_prompts"] > 0 for r in rows["rows"])
    for row in rows["rows"]:  # the continuous outcome beside the flip share
        draws = row["matched_margin_gain"]
        assert len(draws) == 2 and 1 / 3 <= row["p_value_margin"] <= 1
        mean, low, high = row["paired_margin"]
        assert mean == pytest.approx(row["margin_gain"] - np.mean(draws)) and low <= mean <= high
        # At matched collateral: a draw whose KL fell short of its own size's top set's was
        # grown, one past it shrunk, and its margin gain measured again so scaled.
        assert row["kl"] >= 0 and 1 / 3 <= row["p_value_margin_at_kl"] <= 1
        scaled = zip(
            row["matched_kl"],
            row["matched_scale_at_kl"],
            draws,
            row["matched_margin_gain_at_kl"],
            strict=True,
        )
        for kl, scale, gain, gain_at_kl in scaled:
            assert (scale > 1) == (kl < row["kl"])
            if abs(scale - 1) > 0.05 and abs(gain) > 1e-3:
                assert gain_at_kl != pytest.approx(gain, rel=1e-3)
    assert any(abs(r["margin_gain"]) > 1e-3 for r in rows["rows"])  # the shifts move margins


def test_a_killed_delete_stage_resumes_from_its_finished_cells(
    own_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memgen.delete.stage as delete_stage

    args = ["delete.draws=2", "delete.sizes=[0.02,0.05]", "delete.scorers=[pearson]",
            "delete.ablations=[mean]", "delete.matrix=false", "delete.control=spread"]  # fmt: skip
    cfg = load_config(None, [*TINY, *args])
    whole = Path(shutil.copytree(own_run, tmp_path / "whole"))
    expected = json.loads((run_stage("delete", whole, cfg).path / "delete.json").read_text())
    measure = delete_stage._cell
    measured: list[float] = []

    def killed_on_the_second(*cell: object) -> object:
        if measured:
            raise KeyboardInterrupt
        measured.append(cell[3])  # type: ignore[arg-type]
        return measure(*cell)  # type: ignore[arg-type]

    monkeypatch.setattr(delete_stage, "_cell", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_stage("delete", own_run, cfg)
    stage = Stage(own_run, "delete")
    piece = stage.path / "pieces" / "rows-pearson-0.02.json"
    assert not stage.is_finished() and list(piece.parent.iterdir()) == [piece]
    saved = piece.read_bytes()

    def counted(*cell: object) -> object:
        measured.append(cell[3])  # type: ignore[arg-type]
        return measure(*cell)  # type: ignore[arg-type]

    monkeypatch.setattr(delete_stage, "_cell", counted)
    result = json.loads((run_stage("delete", own_run, cfg).path / "delete.json").read_text())
    assert measured == [0.02, 0.05]  # the first cell was read back, not measured again
    assert result == expected  # and the draws are those of an uninterrupted run
    assert {row["control"] for row in result["rows"]} == {"spread"}
    assert not (stage.path / "pieces").exists()
    assert not any(name.startswith("pieces") for name in stage.manifest()["outputs"])
    # A cell saved under another config is measured again.
    piece.parent.mkdir()
    piece.write_bytes(saved)
    measured.clear()
    run_stage("delete", own_run, load_config(None, [*TINY, *args, "delete.draws=3"]))
    assert measured == [0.02, 0.05]


def test_the_record_makes_causal_maps_that_select_for_delete(own_run: Path) -> None:
    args = ["record.patching=[mlp]", "record.patching_pairs=8", "record.mask_steps=20",
            "record.masks=[hardconcrete,slimming]",
            "delete.scorers=[patching,hardconcrete,slimming]", "delete.sizes=[0.05]",
            "delete.draws=2", "delete.ablations=[mean]"]  # fmt: skip
    cfg = load_config(None, [*TINY, *args])
    run_all(own_run, cfg, until="record")
    recorded = read_record(own_run / "record")
    assert recorded.causal is not None and recorded.causal["patching"] == {"mlp": {"n_pairs": 8}}
    for name in ("patching", "hardconcrete", "slimming"):
        scores = recorded.causal_scores(name, "mlp")
        assert scores.shape == (2, 256) and np.isfinite(scores).all() and np.ptp(scores) > 0
    for name in ("hardconcrete", "slimming"):  # a mask's top: its most open gates, by value
        raw = recorded.causal_scores(name, "mlp")
        chosen = np.zeros(raw.shape, dtype=bool)
        chosen[select_top(site_score(name, recorded, "mlp"), 0.05)] = True
        assert raw[chosen].min() >= raw[~chosen].max()
    stage = run_stage("delete", own_run, cfg)
    result = json.loads((stage.path / "delete.json").read_text())
    assert [row["scorer"] for row in result["rows"]] == ["patching", "hardconcrete", "slimming"]
    assert result["matrices"] == []  # whole-record maps have no per-memory subset
    with pytest.raises(MemgenError, match=r"record\.patching=\[resid\]"):
        recorded.causal_scores("patching", "resid")


def test_the_report_shows_bound_and_ablation_once_they_have_run(own_run: Path) -> None:
    cfg = load_config(None, [*TINY, "bound.steps=5", "bound.layers=[1]"])
    run_stage("bound", own_run, cfg)
    run_stage("ablate", own_run, cfg)
    run_stage("report", own_run, cfg)
    results = json.loads((own_run / "results.json").read_text())
    assert [row["layer"] for row in results["bound"]] == [1, 1]
    assert results["ablation"]["rows"] and set(results["ablation"]["baseline"]) == {"mem", "gen"}
    html = (own_run / "report" / "report.html").read_text()
    assert "memgen bound" in html and "memgen ablate" in html
    assert (own_run / "report" / "ablation.png").is_file()


def test_a_stale_row_stops_the_report_in_one_line_and_keeps_the_old_report(
    own_run: Path, memgen_cli: Callable[..., Exited]
) -> None:
    manifest = own_run / "steer" / "manifest.json"
    written = json.loads(manifest.read_text())
    written["summary"]["rows"][0]["target"] = written["summary"]["rows"][0].pop("targeted")
    manifest.write_text(json.dumps(written))
    before = Stage(own_run, "report").manifest()
    done = memgen_cli("report", "--run-dir", own_run, *TINY, "--force")
    assert done.returncode == 2
    assert done.errors == [
        "error: the steer stage's manifest: a SteeringRow has 'targeted': Field required "
        "(written by another memgen version?); re-run that stage with --force"
    ]
    assert Stage(own_run, "report").manifest() == before


def test_report_is_self_contained(tiny_run: Path) -> None:
    html = (tiny_run / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    rows = json.loads((tiny_run / "results.json").read_text())["specificity"]
    for scorer in ("pearson", "attribution"):  # the verdict table asks "is the set special?"
        assert f"selected neurons ({scorer}) are special" in html
        # ... and again at equal collateral, counted from the rows
        cells = [r for r in rows if r["scorer"] == scorer]
        ahead = sum(r["margin_gain"] > max(r["matched_margin_gain_at_kl"]) for r in cells)
        assert f"at equal collateral ({scorer})" in html
        assert f"ahead of every scaled random set in {ahead} of {len(cells)} cells" in html
    assert "http://" not in html and "https://" not in html
    assert (tiny_run / "report" / "steering.png").is_file()


def test_a_second_run_skips_every_stage(own_run: Path) -> None:
    stamps = {name: Stage(own_run, name).manifest_path.stat().st_mtime for name in RUN_ORDER}
    run_all(own_run, load_config(None, TINY))
    assert stamps == {
        name: Stage(own_run, name).manifest_path.stat().st_mtime for name in RUN_ORDER
    }
    # Changing a steering knob redoes steering and the report only.
    run_all(own_run, load_config(None, [*TINY, "steer.alphas=[1]"]))
    changed = {n for n in RUN_ORDER if Stage(own_run, n).manifest_path.stat().st_mtime != stamps[n]}
    assert changed == {"steer", "report"}


# One knob per config section, changed: each stage's identity must notice its own.
CHANGED = {
    "data": "data.n_test=81", "train": "train.lr=2e-3", "behave": "behave.batch_size=64",
    "record": "record.batch_size=64", "neurons": "neurons.consistency_splits=3",
    "probe": "probe.folds=3", "steer": "steer.draws=3", "specificity": "specificity.draws=3",
    "bound": "bound.steps=7", "ablate": "ablate.n_prompts=9",
}  # fmt: skip


def test_every_stage_is_stale_after_a_change_upstream_and_says_so(
    own_run: Path, memgen_cli: Callable[..., Exited]
) -> None:
    cfg = load_config(None, TINY)
    for spec in STAGES:  # the finished run is up to date everywhere (bound, ablate: not run)
        assert (open_step(own_run, spec.name, cfg, force=False) is None) == spec.in_run
    for spec in STAGES:
        if spec.name not in CHANGED:
            continue
        changed = load_config(None, [*TINY, CHANGED[spec.name]])
        assert open_step(own_run, spec.name, changed, force=False) is not None  # re-runs
        for later in STAGES:
            if spec.name in upstream(later.name):  # stops, naming it, before any work
                with pytest.raises(MemgenError, match=rf"{later.name}: .*\b{spec.name}\b"):
                    open_step(own_run, later.name, changed, force=False)
    # The case from the issue: a new neuron set asked of `steer` alone.
    before = Stage(own_run, "steer").manifest()
    args = ["steer", "--run-dir", str(own_run), *TINY, "neurons.top_n=[0.2]"]
    done = memgen_cli(*args)
    assert done.returncode == 2 and "steer: neurons was made with another config" in done.stderr
    assert Stage(own_run, "steer").manifest() == before  # nothing changed in the run folder


def test_a_run_folder_remembers_its_config(
    tmp_path: Path, memgen_cli: Callable[..., Exited], caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    small = ["task=cipher", "data.n_test=30", "data.n_train=50", "data.n_dev=20"]
    assert memgen_cli("data", "--run-dir", run, *small).returncode == 0
    assert load_config(run / "config.yaml").task == "cipher"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert memgen_cli("data", "--run-dir", run).returncode == 0
    assert "data: up to date, skipped" in caplog.text
    # Overrides apply on top of the remembered config.
    assert memgen_cli("data", "--run-dir", run, "data.n_test=31").returncode == 0
    assert len(read_jsonl(run / "data" / "test.jsonl")) == 31


def test_a_stopped_run_keeps_its_config(tmp_path: Path, memgen_cli: Callable[..., Exited]) -> None:
    """Each finished stage leaves the config: a run stopped after it resumes as it was made,
    and a folder with finished stages but no config is refused, not redone with defaults."""
    run = tmp_path / "run"
    made = load_config(None, ["task=cipher", "data.n_test=30", "data.n_train=50", "data.n_dev=20"])
    run_stage("data", run, made)  # a `memgen run` killed in the next stage got this far
    assert load_config(run / "config.yaml") == made
    (run / "config.yaml").unlink()  # a folder from before configs were kept per stage
    before = (run / "data" / "manifest.json").read_text()
    done = memgen_cli("run", "--run-dir", run, "--until", "data")
    assert done.returncode == 2 and "holds finished stages (data) but no config.yaml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (run / "data" / "manifest.json").read_text() == before
    assert sorted(p.name for p in run.iterdir()) == ["data"]


def test_compare_a_run_with_its_copy(
    tiny_run: Path, tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    """The same weights: the neuron indices correspond, and every selection agrees exactly."""
    copy = shutil.copytree(tiny_run, tmp_path / "copy")
    out = tmp_path / "compare"
    done = memgen_cli("compare", tiny_run, copy, "--shared-units", "--out", out)
    assert done.returncode == 0, done.stderr
    comparison = json.loads((out / "compare.json").read_text())
    results = json.loads((tiny_run / "results.json").read_text())
    first = comparison["runs"][0]
    assert first["probe_best"] == results["probe"]["best"]["accuracy"]
    assert first["gen"] == results["behaviour"]["test_rates"]["gen"]
    summary = comparison["summary"]["color"]["probe_best"]
    assert summary["n"] == 2 and summary["sd"] == 0.0
    (pair,) = comparison["neurons"]
    assert pair["neurons_correspond"] and pair["why"] == "same trained weights"
    assert pair["overlap"]["0.1"]["jaccard"] == 1.0 and pair["layer_profile_distance"]["0.1"] == 0
    assert pair["overlap"]["0.1"]["sign_agreement"] == 1.0
    # From half the pairs of each: the same data, so at least the chance overlap; each
    # run's own split-half overlap beside it.
    halves = {row["top_n"]: row for row in pair["overlap_halves"]["top_n"]}
    assert halves[0.1]["jaccard"]["mean"] >= halves[0.1]["jaccard_chance"]
    assert set(pair["overlap_halves"]["within"]) == {row["run"] for row in comparison["runs"]}
    # A probe fitted on one run's pairs reads the other's (its own, here) in both directions.
    record = read_record(tiny_run / "record")
    for row in pair["cross_probe"]:
        assert row["a_on_b"] == row["b_on_a"] and row["a_on_b"]["n"] == len(record.labels)
        assert row["a_on_b"]["pairs"]["n"] == len(set(record.pair_ids.tolist()))
    assert (out / "compare.png").is_file() and "same trained weights" in done.stdout
    assert (out / "neuron_agreement.png").stat().st_size > 10_000
    # The config the steering was made with, rebuilt from its manifests alone.
    made, given = made_with(tiny_run, "steer"), load_config(None, TINY)
    assert all(getattr(made, s) == getattr(given, s) for s in ("train", "behave", "steer"))
    # Each best steering applied to the copy's held-out prompts: the run's own held-out rate.
    best = results["steering_best"]
    cells = comparison["cross_steering"]
    assert len(cells) == 4 * len(best) and (out / "cross_steering.png").is_file()
    for cell in cells:
        assert cell["targeted"] == best[cell["direction"]]["targeted"]
        assert cell["n_prompts"] == best[cell["direction"]]["n_prompts"]
        assert len(cell["control"]["target_per_draw"]) == 2  # steer.draws of the tiny run


def test_compare_with_shared_units_refuses_runs_trained_apart(
    tiny_run: Path, tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    """Two separately trained networks have no neuron-to-neuron correspondence."""
    other = Path(shutil.copytree(tiny_run, tmp_path / "other"))
    manifest = json.loads((other / "train" / "manifest.json").read_text())
    for name in [k for k in manifest["outputs"] if k.endswith(".safetensors")]:
        manifest["outputs"][name] = "another checksum"  # as a second training would leave
    (other / "train" / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "compare"
    done = memgen_cli("compare", tiny_run, other, "--shared-units", "--out", out)
    assert done.returncode == 2 and len(done.errors) == 1 and "do not share units" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_compare_takes_runs_stopped_early_by_what_their_stages_hold(
    tiny_run: Path, tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    """A recipe's seed table: `--until behave` gives rates and pairs, `--until steer` more."""
    stopped = Path(shutil.copytree(tiny_run, tmp_path / "stopped"))
    after_steer = Path(shutil.copytree(tiny_run, tmp_path / "after_steer"))
    for run, later in ((stopped, ("record", "neurons", "probe", "steer", "specificity")),
                       (after_steer, ("specificity",))):  # fmt: skip
        (run / "results.json").unlink()
        for name in (*later, "report"):
            shutil.rmtree(run / name, ignore_errors=True)
    out = tmp_path / "compare"
    command = ["compare", tiny_run, stopped, after_steer, "--out", out]
    done = memgen_cli(*command)
    assert done.returncode == 0, done.stderr
    comparison = json.loads((out / "compare.json").read_text())
    full, rates_only, until_steer = comparison["runs"]
    for key in ("gen", "mem", "other", "flip_rate", "kept_step"):
        assert rates_only[key] == full[key] is not None
    assert rates_only["probe_best"] is None and full["probe_best"] is not None
    assert rates_only["seed"] == full["seed"] and rates_only["task"] == "color"
    assert {k: v for k, v in until_steer.items() if k != "run"} == {
        k: v for k, v in full.items() if k != "run"
    }
    assert [pair["runs"] for pair in comparison["neurons"]] == [[full["run"], "after_steer"]]
    assert list(comparison["layer_profiles"]) == [full["run"], "after_steer"]
    assert comparison["summary"]["color"]["gen"]["n"] == 3
    table = (out / "compare.txt").read_text()
    assert "range" in table and "stopped" in table
    shared = memgen_cli(*command, "--shared-units")
    assert shared.returncode == 2 and len(shared.errors) == 1
    assert "stopped after behave" in shared.errors[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "train.bogus=1"], "unknown key 'train.bogus'"),
        (["run", "task=colr"], "did you mean 'color'"),
        (["config", "task=colr"], "did you mean 'color'"),
        (
            ["config", "data.options.rule_fraction=0.9", "data.options.conflict_fraction=0.2"],
            "data.options: rule_fraction + recall_fraction + conflict_fraction = 1.1 > 1",
        ),
        (["train", "--run-dir", "{tmp}/empty"], "memgen data"),
        (["data", "--run-dir", "/dev/null"], "is a file"),
        (["data", "--run-dir", "/dev/null/run"], "cannot be created"),
        (["run", "train.lr=.inf"], "train.lr"),
        (["run", "record.sites=[]"], "record.sites"),
        (["run", "bound.layers=[]"], "bound.layers"),
        (["run", "train.n_eval=100"], "data.n_dev"),
        (["run", "neurons.scorer=pearsn"], "did you mean 'pearson'"),
        (["run", "specificity.scorers=[auroc,x]"], "unknown neuron scorer 'x'"),
        (["run", "probe.classifier=xgb"], "unknown probe classifier"),
        (["bound", "--run-dir", "{tmp}/empty"], "memgen train --run-dir"),
        (["bound", "bound.lr=0"], "bound.lr"),
        (["ablate", "--run-dir", "{tmp}/empty"], "memgen train --run-dir"),
        (["ablate", "ablate.scales=[]"], "ablate.scales"),
        (["ablate", "ablate.position=first"], "ablate.position"),
        (["localize", "--run-dir", "{tmp}/empty"], "or `memgen run --until train`"),
        (["localize", "localize.fraction=2"], "localize.fraction"),
        (["localize", "localize.selectors=[magic]"], "localize.selectors"),
        (["delete", "--run-dir", "{tmp}/empty"], "memgen"),
        (["delete", "delete.sizes=[0.9]"], "delete.sizes"),
        (["delete", "delete.scorers=[magic]"], "unknown neuron scorer 'magic'"),
        (["delete", "record.gradients=false"], "delete.scorers has attribution"),
        (["delete", "delete.scorers=[patching]"], "add record.patching=[mlp]"),
        (["delete", "delete.scorers=[slimming]"], "add record.masks=[slimming]"),
        (
            ["specificity", "specificity.scorers=[hardconcrete]", "record.masks=[hardconcrete]"],
            "specificity.scorers has hardconcrete at resid",
        ),
        (["record", "record.patching=[attn]"], "record.patching or record.masks need ['attn']"),
        (["steer", "steer.methods=[nmd,magic]"], "unknown steering method 'magic'"),
        (["steer", "steer.budgets=[]"], "steer.budgets"),
        (["steer", "steer.budgets=[0]"], "steer.budgets"),
        (["steer", "steer.alphas=[.nan]"], "steer.alphas"),
        (["steer", "steer.sd_alphas=[.inf]"], "steer.sd_alphas"),
        (["run", "--until", "nowhere"], "not a stage"),
        (["compare", "{tmp}", "{tmp}/other"], "memgen run --run-dir"),
        (["compare", "{tmp}"], "at least two run folders"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In this process, as `memgen` runs them (`main`): a subprocess each costs seconds of
    imports; `test_bad_input_in_a_new_process_is_one_line` checks the real command."""
    from memgen.cli import main

    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    monkeypatch.setattr(sys, "argv", ["memgen", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["empty"], ["other"])


@pytest.mark.parametrize(
    ("args", "message"),
    [(["run", "task=colr"], "did you mean 'color'"), (["run", "--until", "x"], "not a stage")],
)
def test_bad_input_in_a_new_process_is_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = subprocess.run([sys.executable, "-m", "memgen", *args], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


# Cipher on a 2-layer model: with 30% triggered examples, the kept checkpoint (step 500)
# shows both behaviours (about 12% gen, 52% mem) and about 40 flips in 2,300 pairs.
TINY_CIPHER = [
    "task=cipher", "data.n_train=3000", "data.n_test=80", "data.options.trigger_fraction=0.3",
    "train.steps=1000", "train.eval_every=100", "data.n_dev=60", "train.n_layer=2",
    "train.n_embd=64", "train.n_head=2", "train.lr=3e-3", "train.batch_size=32",
    "train.warmup_steps=20", "train.max_other=1.0", "behave.min_flips=6",
    "behave.max_pairs=3000", "behave.target_flips=40", "probe.folds=2",
    "probe.learning_curve=[3,6]", "neurons.top_n=[0.1]", "steer.alphas=[1]",
    "steer.n_prompts=20", "steer.n_side_effect=20", "steer.draws=2", "steer.sd_alphas=[0.5,1]",
    "steer.budgets=[2,4]", "steer.dense_alphas=[2]", "steer.fit_steps=20",
    "steer.methods=[nmd_sd,fitted]", "specificity.sizes=[0.1]", "specificity.budgets=[4]",
    "specificity.draws=2", "specificity.sites=[resid]",
]  # fmt: skip


@pytest.mark.slow  # a 1,000-step training and every stage
def test_cipher_runs_every_stage(tmp_path: Path) -> None:
    run_all(tmp_path, load_config(None, TINY_CIPHER))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "cipher" and results["pairs"]["flipped"] >= 6
    assert {row["site"] for row in results["probe"]["per_layer"]} == {"resid", "mlp"}
    assert results["probe"]["readout"][-1]["paired_accuracy"] == 1.0
    assert {row["direction"] for row in results["steering"]} == {"mem_to_gen", "gen_to_mem"}
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.slow  # an end-to-end training
def test_math_runs_to_pair_mining_and_stops_with_the_fix(tmp_path: Path) -> None:
    """A tiny model cannot learn the scratchpad, so math stops at behave: one line, exit 2.

    The full math pipeline is measured with `configs/gpt2-math-cpu.yaml` (docs/findings.md).
    """
    args = ["task=math", "data.n_train=500", "data.n_test=20", "train.steps=30",
            "train.eval_every=30", "data.n_dev=10", "train.n_layer=1", "train.n_embd=32",
            "train.n_head=2", "train.max_other=1.0", "behave.max_pairs=40",
            "behave.min_flips=2"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "memgen", "run", "--run-dir", "run", *args],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "behave.max_pairs" in errors[0], done.stderr
    # The finished stages stay finished: a rerun with more pairs starts at behave.
    for name in ("data", "train"):
        assert Stage(tmp_path / "run", name).manifest_path.is_file()
    assert (tmp_path / "run" / "behave" / "rates.json").is_file()
