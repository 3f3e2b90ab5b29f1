"""Where a run's time goes: each stage's work beside a floor measured in the same process.

    python benchmarks/stages.py                                  # the README's main recipe
    python benchmarks/stages.py --config configs/smollm2-lora-cipher.yaml --steps 4

Ratios, not absolute times (the machines are shared and differ 2-4x): each row times
memgen's way and the floor alternately, on the same model and inputs, and reports the
median ratio over repeats.

  * train step: memgen's `train` (no evaluation) per step / a bare step of the same
    batches (the model's own loss, backward, AdamW);
  * dev evaluation: `evaluate` on the dev prompts (greedy answers, read teacher-forced
    where they can be, labelled) / one teacher-forced pass over prompt + the rule's answer
    (the least an exact label costs); beside it, its speed-up over generating every answer
    and the share of labels the two ways agree on;
  * generation: memgen's `generate` / a plain batched `model.generate` of the same prompts;
  * activation: a training step of the scratch GPT-2 with PyTorch's fused tanh GELU
    (memgen's) / with transformers' `gelu_new` (the same function, unfused; GPT-2's own);
  * steered answers (with `--run-dir`): 200 dev prompts under 8 random residual shifts,
    read teacher-forced (memgen's `steer` and `specificity`) / generated under each shift;
  * probe (with `--run-dir`): the probe stage's fits with numpy's BLAS on one thread
    (memgen's) / on all of them (numpy's default).

Rows that compare memgen with its own earlier way (activation, steered answers, probe) say
so in the table; below 1 is faster.

Steering's fits are timed against their floor in benchmarks/steer_batching.py (`fit_step_*`:
the passes over a cached prompt prefix that `fit_shifts` runs, vs the whole prompt).

The model is the recipe's, at its initial weights (scratch, or the base with fresh
LoRA): the cost of a step does not depend on what the weights have learned. Answers do:
a trained model's are mostly read teacher-forced, a random one's generated, so with
`--run-dir` a finished run's trained model answers the dev prompts (evaluation and
generation rows):

    python benchmarks/stages.py --run-dir runs/cipher-seed0 --dev 600
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from overhead import paired_ratio  # type: ignore[import-not-found]
from threadpoolctl import threadpool_limits
from transformers import GPT2LMHeadModel
from transformers.activations import ACT2FN

from memgen.core.answers import (
    answer_batch,
    answer_batches,
    decoder_and_head,
    logits_where,
)
from memgen.core.config import RunConfig, load_config
from memgen.core.generation import encode_example, encode_prompt, generate, pad_left
from memgen.core.modeling import load_trained
from memgen.core.reading import label_examples
from memgen.core.recorded import read_record
from memgen.core.sites import n_layers, site_width
from memgen.core.stats import rates
from memgen.probe.probes import layer_accuracies
from memgen.steering.read import read_shifted
from memgen.steering.shifts import generate_shifted
from memgen.tasks import make_task
from memgen.train.loop import Decoder, _batch_indices, train
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


def activation(cfg: RunConfig, model, tokenizer, examples, steps: int, repeats: int) -> dict:
    """A training step of the scratch GPT-2 with PyTorch's fused tanh GELU (memgen's) / the
    same model with transformers' `gelu_new`, the same function in seven elementwise ops."""
    if not isinstance(model, GPT2LMHeadModel):
        return {"ratio": float("nan"), "ours_s": float("nan"), "floor_s": float("nan")}
    tc = cfg.train
    encoded = [encode_example(tokenizer, ex, tc.chat, tc.loss_on) for ex in examples]
    pad, device = tokenizer.pad_token_id, next(model.parameters()).device
    twin = copy.deepcopy(model)
    twin.config.activation_function = "gelu_new"
    for block in twin.transformer.h:
        block.mlp.act = ACT2FN["gelu_new"]

    def stepping(lm: GPT2LMHeadModel) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(lm.parameters(), lr=tc.lr)

        def run() -> None:
            lm.train()
            for step in range(steps):
                rows = _batch_indices(len(encoded), tc.batch_size, step, 0, 1, 0)
                lm(**answer_batch(encoded, rows, pad, device)).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return run

    return alternate(stepping(model), stepping(twin), repeats) | {"steps": steps}


def steered(model, tokenizer, task, dev, repeats: int, shifts: int = 8) -> dict:
    """Steered answers under `shifts` random sparse residual shifts: read teacher-forced
    (memgen's `Bench`) / generated under each shift (memgen before 2026-12-04), and the
    share of answers the two ways agree on."""
    examples = dev[:200]
    rng = np.random.default_rng(0)
    shape = (shifts, n_layers(model), site_width(model, "resid"))
    table = rng.normal(0, 0.5, shape) * (rng.random(shape) < 0.1)
    prompts, budget = [ex.prompt for ex in examples], task.max_new_tokens

    def read() -> list[list[str]]:
        return read_shifted(model, tokenizer, examples, table, "resid", "last",
                            max_new_tokens=budget)  # fmt: skip

    def generating() -> list[list[str]]:
        return generate_shifted(model, tokenizer, prompts, table, "resid", "last",
                                max_new_tokens=budget)  # fmt: skip

    agree = float(np.mean(np.array(read()) == np.array(generating())))
    return alternate(read, generating, repeats) | {"prompts": len(prompts), "shifts": shifts,
                                                   "answers_agree": agree}  # fmt: skip


def probe(cfg: RunConfig, run_dir: Path, repeats: int) -> dict:
    """The probe stage's fits at every recorded site and layer with numpy's BLAS on one
    thread (memgen's, `pipeline._open_and_run`) / on every thread (numpy's default)."""
    recorded = read_record(run_dir / "record")
    pc = cfg.probe

    def fits() -> None:
        for site in recorded.sites:
            layer_accuracies(recorded.activations(site), recorded.labels, recorded.pair_ids,
                             pc.classifier, pc.folds, cfg.seed)  # fmt: skip

    def one_thread() -> None:
        with threadpool_limits(limits=1, user_api="blas"):
            fits()

    return alternate(one_thread, fits, repeats) | {"sites": list(recorded.sites)}


def evaluation(cfg: RunConfig, model, tokenizer, task, dev, repeats: int) -> dict:
    """`evaluate` (answers read teacher-forced where they can be) against its floor, one
    teacher-forced pass over prompt + rule's answer, and against generating every answer
    (memgen before 2026-12-04), with the share of labels the two ways agree on."""
    chat, decoder = cfg.train.chat, Decoder(cfg.behave.num_beams, cfg.behave.max_new_tokens)
    ruled = [dataclasses.replace(ex, completion=ex.gen_answer) for ex in dev]
    batches = answer_batches(model, tokenizer, ruled, chat, decoder.batch_size)
    split = decoder_and_head(model)

    @torch.no_grad()
    def floor() -> None:
        model.eval()
        for batch in batches:
            scored = batch["labels"][:, 1:] != -100
            logits_where(model, split, batch["input_ids"], batch["attention_mask"], scored)

    def generating() -> list[str]:
        budget = decoder.max_new_tokens or task.max_new_tokens
        outputs = generate(model, tokenizer, [ex.prompt for ex in dev], max_new_tokens=budget,
                           batch_size=decoder.batch_size, chat=chat)  # fmt: skip
        return [task.label(ex, out) for ex, out in zip(dev, outputs, strict=True)]

    def ours() -> list[str]:
        return [
            row.label for row in label_examples(model, tokenizer, task, dev, decoder, chat=chat)
        ]

    agree = float(np.mean([a == b for a, b in zip(ours(), generating(), strict=True)]))
    before = alternate(ours, generating, repeats)
    return alternate(ours, floor, repeats) | {
        "prompts": len(dev), "labels_agree": agree, "rates": rates(ours()),
        "vs_generating": round(1 / before["ratio"], 2),
    }  # fmt: skip


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
    parser.add_argument(
        "--run-dir", type=Path, help="a finished run: its trained model answers the dev prompts"
    )
    args = parser.parse_args()

    cfg = load_config(args.config, [f"data.n_dev={args.dev}"])
    task = make_task(cfg.task, cfg.data.options)
    train_set = task.train_set(cfg.data.n_train, seed=cfg.seed)
    dev = task.test_set(args.dev, seed=cfg.seed + 1)
    device = torch.device("cpu")
    model, tokenizer = build_model(cfg, task, train_set, device)
    rows = {
        "train step": train_step(cfg, model, tokenizer, task, train_set, args.steps, args.repeats),
        "activation": activation(cfg, model, tokenizer, train_set, args.steps, args.repeats),
    }
    if args.run_dir:  # read answers cost what the trained model answers: measure on it
        model, tokenizer = load_trained(args.run_dir / "train" / "model")
    rows["dev evaluation"] = evaluation(cfg, model, tokenizer, task, dev, args.repeats)
    rows["generation"] = generation(cfg, model, tokenizer, task, dev, args.repeats)
    if args.run_dir:
        rows["steered answers"] = steered(model, tokenizer, task, dev, args.repeats)
        if (args.run_dir / "record").is_dir():  # a run stopped at `behave` has no record
            rows["probe"] = probe(cfg, args.run_dir, args.repeats)
    print(f"{args.config.name}, {torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"{'stage':16} {'ours / floor':>12} {'ours s':>9} {'floor s':>9}")
    for name, row in rows.items():
        print(f"{name:16} {row['ratio']:>11.2f}x {row['ours_s']:>9.3f} {row['floor_s']:>9.3f}")
    evaluated = rows["dev evaluation"]
    print(f"dev evaluation: {evaluated['vs_generating']:.2f}x faster than generating every "
          f"answer; labels agree on {100 * evaluated['labels_agree']:.1f}% of "
          f"{evaluated['prompts']} prompts (rates {evaluated['rates']})")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"config": str(args.config), **rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
