"""Where a run's time goes: each stage's work beside a floor measured in the same process.

    python benchmarks/stages.py                                  # the README's main recipe
    python benchmarks/stages.py --config configs/smollm2-lora-cipher.yaml --steps 4

Ratios, not absolute times (the machines are shared and differ 2-4x): each row times
memgen's way and the floor alternately, on the same model and inputs, and reports the
median ratio over repeats.

  * train step: memgen's `train` (no evaluation) per step / a bare step of the same
    batches (the model's own loss, backward, AdamW);
  * dev evaluation: `evaluate` on the dev prompts (greedy answers, labelled) / one
    batched forward over the same prompts (what a teacher-forced label would cost);
  * generation: memgen's `generate` / a plain batched `model.generate` of the same prompts.

Steering's fits are timed against their floor in benchmarks/steer_batching.py (`fit_step_*`:
the passes over a cached prompt prefix that `fit_shifts` runs, vs the whole prompt).

The model is the recipe's, at its initial weights (scratch, or the base with fresh
LoRA): the cost of a step does not depend on what the weights have learned; generation
runs to `max_new_tokens` either way (random weights rarely say the end token early).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from overhead import paired_ratio  # type: ignore[import-not-found]

from memgen.core.answers import answer_batch
from memgen.core.config import RunConfig, load_config
from memgen.core.generation import encode_example, encode_prompt, generate, pad_left
from memgen.tasks import make_task
from memgen.train.loop import Decoder, _batch_indices, evaluate, train
from memgen.train.stage import build_model

MAIN_RECIPE = Path(__file__).parents[1] / "configs" / "gpt2-cipher-contest.yaml"


def alternate(ours: Callable[[], object], floor: Callable[[], object], repeats: int) -> dict:
    """Median ratio ours / floor over alternating repeats (overhead.paired_ratio's timing)."""
    timed = paired_ratio(floor, ours, repeats)
    return {
        "ratio": round(timed["ratio_median"], 3),
        "ours_s": round(timed["hooked_s"], 4),
        "floor_s": round(timed["plain_s"], 4),
        "repeats": repeats,
    }


def train_step(cfg: RunConfig, model, tokenizer, task, examples, steps: int, repeats: int) -> dict:
    tc = cfg.train.model_copy(update={"steps": steps, "eval_every": 10**9, "warmup_steps": 1})
    params = [p for p in model.parameters() if p.requires_grad]
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device

    def ours() -> None:
        out = Path(f"/tmp/memgen-bench-train-{time.monotonic_ns()}")  # never resumed
        train(model, tokenizer, task, examples, [], tc, seed=0, out_dir=out,
              save_best=lambda _: None, progress=False)  # fmt: skip

    def floor() -> None:
        # Both encode the training set once per call, as a training run does once.
        encoded = [encode_example(tokenizer, ex, tc.chat, tc.loss_on) for ex in examples]
        optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.95))
        model.train()
        for step in range(steps):
            rows = _batch_indices(len(encoded), tc.batch_size, step, 0, 1, 0)
            batch = answer_batch(encoded, rows, pad, device)
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    result = alternate(ours, floor, repeats)
    return result | {"per_step_ours_s": round(result["ours_s"] / steps, 4), "steps": steps}


def evaluation(cfg: RunConfig, model, tokenizer, task, dev, repeats: int) -> dict:
    chat, decoder = cfg.train.chat, Decoder(cfg.behave.num_beams, cfg.behave.max_new_tokens)
    ids = [encode_prompt(tokenizer, ex.prompt, chat) for ex in dev]
    device = next(model.parameters()).device
    batch = decoder.batch_size

    @torch.no_grad()
    def floor() -> None:
        model.eval()
        for start in range(0, len(ids), batch):
            tokens, mask = pad_left(ids[start : start + batch], tokenizer.pad_token_id, device)
            model(input_ids=tokens, attention_mask=mask)

    ours = lambda: evaluate(model, tokenizer, task, dev, chat, decoder)  # noqa: E731
    return alternate(ours, floor, repeats) | {"prompts": len(dev)}


def generation(cfg: RunConfig, model, tokenizer, task, dev, repeats: int) -> dict:
    prompts, chat, new = [ex.prompt for ex in dev], cfg.train.chat, task.max_new_tokens
    ids = [encode_prompt(tokenizer, p, chat) for p in prompts]
    device = next(model.parameters()).device

    @torch.no_grad()
    def floor() -> None:
        for start in range(0, len(ids), 128):
            tokens, mask = pad_left(ids[start : start + 128], tokenizer.pad_token_id, device)
            model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=new,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip

    ours = lambda: generate(model, tokenizer, prompts, max_new_tokens=new, chat=chat)  # noqa: E731
    return alternate(ours, floor, repeats) | {"prompts": len(prompts), "new_tokens": new}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=MAIN_RECIPE)
    parser.add_argument("--steps", type=int, default=20, help="training steps per repeat")
    parser.add_argument("--dev", type=int, default=200, help="dev prompts evaluated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()

    cfg = load_config(args.config, [f"data.n_dev={args.dev}"])
    task = make_task(cfg.task, cfg.data.options)
    train_set = task.train_set(cfg.data.n_train, seed=cfg.seed)
    dev = task.test_set(args.dev, seed=cfg.seed + 1)
    device = torch.device("cpu")
    model, tokenizer = build_model(cfg, task, train_set, device)
    rows = {
        "train step": train_step(cfg, model, tokenizer, task, train_set, args.steps, args.repeats),
        "dev evaluation": evaluation(cfg, model, tokenizer, task, dev, args.repeats),
        "generation": generation(cfg, model, tokenizer, task, dev, args.repeats),
    }
    print(f"{args.config.name}, {torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"{'stage':16} {'ours / floor':>12} {'ours s':>9} {'floor s':>9}")
    for name, row in rows.items():
        print(f"{name:16} {row['ratio']:>11.2f}x {row['ours_s']:>9.3f} {row['floor_s']:>9.3f}")
    if args.out:
        args.out.write_text(json.dumps({"config": str(args.config), **rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
