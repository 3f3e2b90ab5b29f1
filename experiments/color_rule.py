"""Exploration harness for the color rule (docs/color-design.md, "Learning the rule").

Trains a model from scratch on fresh batches of color prompts (never a fixed training
set) and every `--eval-every` steps prints, on 400 prompts at the paper's distractor
rate, gen / mem / other, rule following (share of context-colour answers that are the
clue's), accuracy on free-name rule prompts and on the single hops (a stated colour,
a name's animal, who shares the target's role), read from the first answer token.
Not part of the package: it is the quick loop the design table was measured with; a
design that works becomes task options and `train` settings (as `extra_questions` and
`train.copy_warmup` did).

    python experiments/color_rule.py NAME --opts '{"rule_fraction": 1.0, "distractor_rate": 0.5}'
        [--layers 4] [--arch gpt2|llama] [--lr 1e-3] [--aux LOOKUP:WHO:ANIMAL]
        [--multi K] [--copy-steps N] [--loss-on answer|sequence] [--max-minutes M]
        [--early-opts '{"max_names": 3, "distractor_rate": 1.0}' --early-steps N]
"""

import argparse
import json
import math
import random
import time

import torch

from memgen.behave.rule import first_word, rule_following
from memgen.core.config import TrainConfig
from memgen.core.examples import Example
from memgen.core.generation import encode_example, encode_prompt, left_padded_positions, pad_left
from memgen.core.modeling import scratch_gpt2
from memgen.tasks.base import make_task
from memgen.tasks.color import (
    ANIMAL_QUESTION,
    COLORS,
    FREE_NAMES,
    LIKE_QUESTION,
    MEMORIZED,
    QUESTION,
    REFERENCE_DISTRACTOR_RATE,
    ColorTask,
)
from memgen.tasks.tokenizer import build_tokenizer
from memgen.train.loop import _batch, copy_rows, learning_rate, word_ids

p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("--layers", type=int, default=4)
p.add_argument("--embd", type=int, default=128)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--steps", type=int, default=6000)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--opts", default="{}")
p.add_argument("--eval-every", type=int, default=500)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--warmup", type=int, default=100)
p.add_argument(
    "--dist-ramp", default="", help="start:end:steps distractor-rate ramp for training data"
)
p.add_argument("--loss-on", default="answer")
p.add_argument("--wd", type=float, default=0.1)
p.add_argument("--max-minutes", type=float, default=30)
p.add_argument("--arch", default="gpt2")
p.add_argument("--multi", type=int, default=0)
p.add_argument("--copy-steps", type=int, default=0)
p.add_argument("--copy-mix", type=float, default=0.0)
p.add_argument("--aux", default="", help="lookup:who:animal fractions of training prompts")
p.add_argument("--early-opts", default="{}", help="task options for the first task steps")
p.add_argument("--early-steps", type=int, default=0, help="task steps that use --early-opts")
a = p.parse_args()
torch.manual_seed(a.seed)
opts = json.loads(a.opts)
if a.multi:
    opts["extra_questions"] = a.multi
task: ColorTask = make_task("color", opts)
tok = build_tokenizer(task.tokenizer_spec())
if a.arch == "gpt2":
    model = scratch_gpt2(len(tok), 160, a.layers, a.embd, a.heads, tok)
else:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=a.embd,
            intermediate_size=4 * a.embd,
            num_hidden_layers=a.layers,
            num_attention_heads=a.heads,
            num_key_value_heads=a.heads,
            max_position_embeddings=160,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
    )
opt = torch.optim.AdamW(
    [
        {"params": [q for q in model.parameters() if q.dim() >= 2], "weight_decay": a.wd},
        {"params": [q for q in model.parameters() if q.dim() < 2], "weight_decay": 0.0},
    ],
    lr=a.lr,
    betas=(0.9, 0.95),
)
rng = random.Random(a.seed)
ramp = [float(x) for x in a.dist_ramp.split(":")] if a.dist_ramp else None

aux = [float(x) for x in a.aux.split(":")] if a.aux else [0.0, 0.0, 0.0]
HOPS = ("lookup", "who", "animal")


def rule_prompt(t, r):
    """A rule prompt about a free name: (prompt, target, clue, its colour, the shared role)."""
    target = r.choice(FREE_NAMES)
    colour = r.choice(COLORS)
    prompt, clue, role = t._prompt(r, target, colour, set(), tuple(MEMORIZED) + FREE_NAMES)
    return prompt, target, clue, colour, role


def aux_example(t, r, fractions=aux):
    """Hop supervision on free names (look-up, who, animal shares), or None for the task's."""
    draw = r.random()
    prompt, target, clue, colour, role = rule_prompt(t, r)
    context = prompt[: prompt.index("what color is")]
    questions = (  # the clue's colour, which the context states; the clue; the animal
        (QUESTION.format(name=clue), colour),
        (LIKE_QUESTION.format(name=target), clue),
        (ANIMAL_QUESTION.format(name=target), role),
    )
    bound = 0.0
    for kind, share, (question, answer) in zip(HOPS, fractions, questions, strict=True):
        bound += share
        if draw < bound:
            return Example(context + question, answer, "", answer, {"kind": kind})
    return None


def train_task(step):
    if step < a.copy_steps + a.early_steps:  # a curriculum: easier prompts first
        return early
    if not ramp:
        return task
    s, e, n = ramp
    rate = s + (e - s) * min(1.0, step / n)
    return ColorTask(task.options.model_copy(update={"distractor_rate": rate}))


early = ColorTask(task.options.model_copy(update=json.loads(a.early_opts)))
# Evaluation prompts, drawn once, at the paper's distractor rate.
paper = ColorTask(task.options.model_copy(update={"distractor_rate": REFERENCE_DISTRACTOR_RATE}))
check = task.rule_check_set(400, 1)
free = []
for i in range(400):
    prompt, _, _, colour, _ = rule_prompt(paper, random.Random(f"free-{i}"))
    free.append(Example(prompt, colour, "", colour, {"kind": "rule"}))
easy = []  # rule prompts from the curriculum's first phase
for i in range(400 if a.early_steps else 0):
    prompt, _, _, colour, _ = rule_prompt(early, random.Random(f"easy-{i}"))
    easy.append(Example(prompt, colour, "", colour, {"kind": "rule"}))
hop_sets = {
    kind: [aux_example(paper, random.Random(f"d{kind}{j}"), onehot) for j in range(200)]
    for kind, onehot in zip(HOPS, ((1, 0, 0), (0, 1, 0), (0, 0, 1)), strict=True)
}


@torch.no_grad()
def answers(examples):
    """The first answer token, greedy, per prompt."""
    model.eval()
    outs = []
    for i in range(0, len(examples), 200):
        seqs = [encode_prompt(tok, ex.prompt, False) for ex in examples[i : i + 200]]
        ids, mask = pad_left(seqs, tok.pad_token_id, torch.device("cpu"))
        positions = left_padded_positions(mask)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        outs += tok.batch_decode(logits[:, -1].argmax(-1)[:, None])
    model.train()
    return outs


def accuracy(examples):
    outs = answers(examples)
    hits = sum(
        first_word(o) == e.completion.split()[0].lower()
        for e, o in zip(examples, outs, strict=True)
    )
    return hits / len(examples)


def evaluate(step, loss, t0):
    rule = rule_following(task, check, answers(check))
    row = dict(
        step=step,
        **{kind: accuracy(examples) for kind, examples in hop_sets.items()},
        loss=round(loss, 4),
        **rule["rates"],
        rule_follow=round(rule["share"] or 0.0, 3),
        n_ctx=rule["n"],
        free_acc=accuracy(free),
        **({"easy_acc": accuracy(easy)} if easy else {}),
        minutes=round((time.time() - t0) / 60, 2),
    )
    print(json.dumps(row), flush=True)
    return row


t0 = time.time()
running = float("nan")
hist = []
words = word_ids(tok)
schedule = TrainConfig(steps=a.steps, lr=a.lr, warmup_steps=a.warmup)
for step in range(a.steps):
    for group in opt.param_groups:
        group["lr"] = learning_rate(step, schedule)
    copying = step < a.copy_steps or (a.copy_mix and rng.random() < a.copy_mix)
    if copying:  # word lists written twice, loss on the second copy
        rows = copy_rows(words, a.batch, a.seed, step)
    else:
        t = train_task(step)
        exs = [aux_example(t, rng) or t.train_example(rng) for _ in range(a.batch)]
        rows = [encode_example(tok, ex, False, a.loss_on) for ex in exs]
    batch = _batch(rows, list(range(len(rows))), tok.pad_token_id, torch.device("cpu"))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
    if copying and (step + 1) % 100 == 0:
        print("copy", step + 1, round(loss.item(), 3), flush=True)
    if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
        hist.append(evaluate(step + 1, running, t0))
    if (time.time() - t0) / 60 > a.max_minutes:
        hist.append(evaluate(step + 1, running, t0))
        break
with open(f"{a.name}.json", "w") as out:
    json.dump({"args": vars(a), "history": hist}, out)
