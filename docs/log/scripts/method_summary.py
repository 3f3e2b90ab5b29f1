"""The method's headline numbers per run, as a markdown table: one column per run.

    python docs/log/scripts/method_summary.py RUN [RUN ...]

Reads each run's results.json (written by `memgen report`): the best probe and the
resid probe's range early and late, mean abs NMD (raw and in sd units) early and late,
split-half agreement of the top 5%, the best held-out steering per direction beside its
matched random neurons and the training-prompt accuracy under it, and the specificity
rows (selected set's share vs the draws' range, rank p). "Early" is the first two thirds
of the layers, "late" the rest.
"""

import json
import sys
from pathlib import Path


def _span(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _thirds(values: list[float], digits: int = 2) -> str:
    cut = 2 * len(values) // 3
    return f"{_span(values[:cut], digits)} / {_span(values[cut:], digits)}"


def _probe(r: dict) -> list[str]:
    p = r["probe"]
    b, shuffled = p["best"], p["baseline"]["shuffled_labels"]
    resid = [x["accuracy"] for x in p["per_layer"] if x["site"] == "resid"]
    return [
        f"{100 * b['accuracy']:.1f}% [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}] "
        f"{b['site']} {b['layer']} (n = {b['n']}; shuffled {100 * shuffled:.1f}%)",
        _thirds(resid),
    ]


def _nmd(r: dict) -> list[str]:
    n = r["neurons"]
    c, top = n["consistency"], n["consistency"]["top5"]
    return [
        f"raw {_thirds(n['mean_abs_nmd'], 3)}; sd units {_thirds(n['mean_abs_nmd_sd'])}",
        f"{top['jaccard']:.2f} (layer-matched chance {top['jaccard_chance_layers']:.2f}, "
        f"labels permuted {top['jaccard_permuted']:.2f}); Spearman {c['spearman']:.2f} "
        f"(permuted {c['spearman_permuted']:.2f})",
    ]


def _steer(r: dict, direction: str) -> str:
    best = r["steering_best"][direction]
    target = direction[-3:]
    lo, hi = best["ci"][target]
    matched = best["controls"]["matched"]
    side = best["side_effect"]
    return (
        f"{best['method']} {best['selection']} size {best['size']:g}: "
        f"{100 * best['targeted'][target]:.0f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
        f"(n = {best['n_prompts']}); matched random {100 * matched['target']['min']:.0f}-"
        f"{100 * matched['target']['max']:.0f}% (p {matched['p_value']:.2f}); training-prompt "
        f"accuracy {side['baseline']:.2f} -> {side['train_accuracy']:.2f}, KL {side['kl']:.2f}"
    )


def _specificity(r: dict) -> list[tuple[str, str]]:
    out = []
    for row in r["specificity"]:
        draws = row["matched_per_draw"]
        share = row["targeted"][row["direction"][-3:]]
        key = f"specificity, {row['scorer']} top {100 * row['size']:g}% ({row['direction']})"
        value = (
            f"{100 * share:.0f}% vs {100 * min(draws):.0f}-{100 * max(draws):.0f}% "
            f"(p {row['p_value']:.2f}); gap gain {row['margin_gain']:.2f} vs "
            f"{max(row['matched_margin_gain']):.2f} (p {row['p_value_margin']:.2f})"
        )
        at_kl = row.get("matched_margin_gain_at_kl")
        if at_kl:
            value += f", at equal KL vs {max(at_kl):.2f} (p {row['p_value_margin_at_kl']:.2f})"
        out.append((key, value))
    return out


def summary(run: Path) -> dict[str, str]:
    r = json.loads((run / "results.json").read_text())
    rows = dict(zip(["best probe", "resid probe, early / late layers"], _probe(r), strict=True))
    rows |= dict(
        zip(
            ["mean abs NMD (resid), early / late", "split-half top-5% Jaccard"],
            _nmd(r),
            strict=True,
        )
    )
    for direction in ("mem_to_gen", "gen_to_mem"):
        rows[f"best steering, {direction}"] = _steer(r, direction)
    rows |= dict(_specificity(r))
    return rows


def main(runs: list[str]) -> None:
    tables = [summary(Path(run)) for run in runs]
    print("| measure | " + " | ".join(Path(run).name for run in runs) + " |")
    print("| --- " * (1 + len(runs)) + "|")
    for key in tables[0]:
        print(f"| {key} | " + " | ".join(t.get(key, "-") for t in tables) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
