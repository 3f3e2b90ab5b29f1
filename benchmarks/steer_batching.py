"""Speed-up of batching many steering settings into one call, as ratios in one process.

    python benchmarks/steer_batching.py               # GPT-2 4x128 (the default run's size)
    python benchmarks/steer_batching.py --shifts 16 --prompts 100 --device cuda

The steer and specificity stages compare many settings (sizes, sets, controls) on the
same prompts. Measured on the same prompts and shifts, with equal outputs checked:
  * generation: one `generate_shifted` call for K shifts (each row its own shift) vs a
    loop of K `memgen.steer` + `generate` calls, one setting at a time; and vs the same
    rows with every prompt run whole per shift, where `generate_shifted` runs a prompt's
    shared part once and only its last token per shift;
  * fitting: one `fit_shifts` call for K masks vs K calls of one mask each;
  * a fitting step's forward and backward for K shifts on a batch of prompts: the whole
    prompt once per shift; the prompt but its last token run into a KV cache each step
    and the cache repeated K times (memgen before 2026-12-01); and the prompts' shared
    part run once for all steps (`steering.prefix.Prefix`), the K copies of the last
    token side by side in one row.
Timings alternate the two ways and report the median ratio over repeats.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import torch
from overhead import color_model, model_parser, paired_ratio  # type: ignore[import-not-found]

from memgen.core.generation import (
    encode_prompt,
    generate,
    generate_batch,
    left_padded_positions,
    pad_id_of,
    pad_left,
)
from memgen.core.modeling import cache_argument, model_identity, returned_cache
from memgen.core.prefix import Prefix
from memgen.steering.api import steer
from memgen.steering.prefix import steered_last_logits
from memgen.steering.saved import Steering
from memgen.steering.shifts import RowShifts, fit_shifts, generate_shifted


def paired(loop: Callable[[], object], batched: Callable[[], object], repeats: int) -> dict:
    """overhead.paired_ratio with the loop as the baseline, as a speed-up (loop / batched)."""
    timed = paired_ratio(loop, batched, repeats)
    return {"speedup_median": 1 / timed["ratio_median"], "loop_s": timed["plain_s"],
            "batched_s": timed["hooked_s"], "repeats": repeats}  # fmt: skip


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--shifts", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--fit-steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128, help="rows per batched generate call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer, task = color_model(args)
    examples = task.test_set(args.prompts, seed=0)
    prompts = [ex.prompt for ex in examples]
    rng = np.random.default_rng(0)
    masks = rng.random((args.shifts, args.layers, args.width)) < 0.05
    shifts = masks * rng.normal(0, 1.0, masks.shape)
    identity = model_identity(model)

    def loop_generate() -> list[list[str]]:
        out = []
        for shift in shifts:
            with steer(model, Steering(identity, "resid", "last", shift)):
                out.append(generate(model, tokenizer, prompts, max_new_tokens=args.new_tokens))
        return out

    def batched_generate() -> list[list[str]]:
        return generate_shifted(model, tokenizer, prompts, shifts, "resid", "last",
                                max_new_tokens=args.new_tokens, batch_size=args.batch)  # fmt: skip

    encoded = [encode_prompt(tokenizer, prompt, False) for prompt in prompts]
    device = next(model.parameters()).device
    table = torch.as_tensor(shifts, dtype=torch.float32, device=device)

    def whole_prompts() -> list[list[str]]:
        """Rows of (shift, prompt), every prompt run whole per shift (memgen before 2026-12-01)."""
        items = [(k, i) for k in range(len(shifts)) for i in range(len(prompts))]
        out = [[""] * len(prompts) for _ in shifts]
        shifter = RowShifts("resid", list(range(args.layers)), "last")
        with shifter.attached(model):
            for start in range(0, len(items), args.batch):
                chunk = items[start : start + args.batch]
                ids, mask = pad_left([encoded[i] for _, i in chunk], pad_id_of(tokenizer), device)
                shifter.rows = table[[k for k, _ in chunk]]
                texts = generate_batch(model, tokenizer, ids, mask, args.new_tokens)
                for (k, i), text in zip(chunk, texts, strict=True):
                    out[k][i] = text
        return out

    equal = loop_generate() == batched_generate() == whole_prompts()
    answers = [ex.gen_answer for ex in examples]
    unit = np.ones((args.layers, args.width))

    def fit(chosen: np.ndarray) -> np.ndarray:
        return fit_shifts(model, tokenizer, prompts, answers, chosen, unit, "resid",
                          budget=4.0, steps=args.fit_steps, batch_size=16)[0]  # fmt: skip

    def loop_fit() -> np.ndarray:
        return np.concatenate([fit(mask[None]) for mask in masks])

    def batched_fit() -> np.ndarray:
        return fit(masks)

    fits_close = bool(np.allclose(loop_fit(), batched_fit(), atol=1e-4))
    steps = fit_steps(model, tokenizer, prompts, shifts, args)
    results = {
        "setup": vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "generate_K_shifts": paired(loop_generate, batched_generate, args.repeats)
        | {"outputs_equal": equal},
        "generate_whole_prompts_vs_shared_prefix": paired(
            whole_prompts, batched_generate, args.repeats
        ),
        "fit_K_masks": paired(loop_fit, batched_fit, args.repeats) | {"shifts_close": fits_close},
        **steps,
    }
    print(json.dumps(results, indent=2))


def fit_steps(model: torch.nn.Module, tokenizer: object, prompts: list[str],
              shifts: np.ndarray, args: argparse.Namespace) -> dict:  # fmt: skip
    """`--fit-steps` steps of K shifts' logits and gradient on random batches, three ways."""
    device = next(model.parameters()).device
    ids, mask = pad_left([encode_prompt(tokenizer, p, False) for p in prompts], 0, device)
    positions = left_padded_positions(mask)
    table = torch.tensor(shifts, dtype=torch.float32, device=device, requires_grad=True)
    count = len(shifts)
    shifter = RowShifts("resid", list(range(args.layers)), "last")
    batches = [np.random.default_rng(i).choice(len(prompts), 64) for i in range(args.fit_steps)]

    def whole_prompt(rows: np.ndarray) -> torch.Tensor:
        shifter.rows = table.repeat(len(rows), 1, 1)
        out = model(
            input_ids=ids[rows].repeat_interleave(count, 0),
            attention_mask=mask[rows].repeat_interleave(count, 0),
            position_ids=positions[rows].repeat_interleave(count, 0),
        ).logits[:, -1]
        return out.view(len(rows), count, -1)  # fmt: skip

    def repeated_cache(rows: np.ndarray) -> torch.Tensor:
        shifter.rows = None
        with torch.no_grad():
            out = model(input_ids=ids[rows, :-1], attention_mask=mask[rows, :-1],
                        position_ids=positions[rows, :-1], use_cache=True)  # fmt: skip
        cache = returned_cache(out)
        cache.batch_repeat_interleave(count)
        shifter.rows = table.repeat(len(rows), 1, 1)
        logits = model(input_ids=ids[rows, -1:].repeat_interleave(count, 0),
                       attention_mask=mask[rows].repeat_interleave(count, 0),
                       position_ids=positions[rows, -1:].repeat_interleave(count, 0),
                       **{cache_argument(model): cache}).logits[:, -1]  # fmt: skip
        return logits.view(len(rows), count, -1)

    def shared_prefix() -> Callable[[np.ndarray], torch.Tensor]:
        shifter.rows = None
        prefix = Prefix.of(model, ids, mask)  # once per fit, as `fit_shifts` does
        return lambda rows: steered_last_logits(model, shifter, prefix.select(rows), table)

    def run(way: Callable[[], Callable[[np.ndarray], torch.Tensor]]) -> torch.Tensor:
        logits_of = way()
        with shifter.attached(model):
            for rows in batches:
                logits = logits_of(rows)
                table.grad = None
                logits.logsumexp(-1).sum().backward()
        return logits.detach()

    ways = {"whole_prompt": lambda: whole_prompt, "repeated_cache": lambda: repeated_cache,
            "shared_prefix": shared_prefix}  # fmt: skip
    found = {name: run(way) for name, way in ways.items()}  # the last step's logits
    out: dict = {
        f"fit_step_{name}_vs_shared_prefix": paired(
            lambda way=ways[name]: run(way), lambda: run(shared_prefix), args.repeats
        )
        for name in ("whole_prompt", "repeated_cache")
    }
    out["fit_step_logits_close"] = all(
        bool(torch.allclose(found[name], found["whole_prompt"], atol=1e-4)) for name in found
    )
    return out


if __name__ == "__main__":
    main()
