"""Cost of memgen's hooks, as ratios measured in one process (the machine is shared and noisy).

    python benchmarks/overhead.py                 # GPT-2 4x128 (the default run's size)
    python benchmarks/overhead.py --family llama --layers 8 --width 256 --device cuda

Measures, on the same batch of color-task prompts:
  * steered generation (top 10% neurons, alpha x NMD at every forward) / plain generation
  * recording every layer at resid + mlp / a plain forward pass
Timings alternate plain and hooked runs and report the median ratio over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from memgen.core.generation import encode_prompt, generate, pad_left
from memgen.core.hooks import record
from memgen.core.modeling import model_identity
from memgen.core.neuron_set import NeuronSet
from memgen.core.sites import all_sites, n_layers, site_width
from memgen.steering.api import steer
from memgen.tasks import Task, make_task
from memgen.tasks.tokenizer import build_tokenizer


def build(family: str, layers: int, width: int, vocab: int) -> torch.nn.Module:
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_layer=layers,
                n_embd=width,
                n_head=max(1, width // 32),
                n_positions=256,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            num_hidden_layers=layers,
            hidden_size=width,
            intermediate_size=width * 4,
            num_attention_heads=max(1, width // 32),
            num_key_value_heads=max(1, width // 64),
        )
    )


def random_neuron_set(model: torch.nn.Module, fraction: float, seed: int) -> NeuronSet:
    rng = np.random.default_rng(seed)
    layers, width = n_layers(model), site_width(model, "resid")
    count = int(fraction * layers * width)
    flat = rng.choice(layers * width, size=count, replace=False)
    return NeuronSet(
        model=model_identity(model),
        site="resid",
        scorer="pearson",
        top_n=fraction,
        n_layers=layers,
        width=width,
        layers=flat // width,
        neurons=flat % width,
        nmd=rng.normal(0, 0.5, count).astype(np.float32),
        score=rng.uniform(0.2, 0.9, count).astype(np.float32),
    )


def paired_ratio(
    plain: Callable[[], object], hooked: Callable[[], object], repeats: int
) -> dict[str, float]:
    plain(), hooked()  # warm-up
    ratios, plain_s, hooked_s = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        hooked()
        t2 = time.perf_counter()
        plain_s.append(t1 - t0)
        hooked_s.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return {
        "ratio_median": statistics.median(ratios),
        "plain_s": statistics.median(plain_s),
        "hooked_s": statistics.median(hooked_s),
        "repeats": repeats,
    }


def model_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser with the random model it builds: --family, --layers, --width,
    --device (`color_model` builds it)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    return parser


def color_model(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, Task]:
    """The color task, its tokenizer and a seeded random model of the size `args` asks."""
    torch.manual_seed(0)
    task = make_task("color")
    tokenizer = build_tokenizer(task.tokenizer_spec())
    model = build(args.family, args.layers, args.width, len(tokenizer)).to(args.device).eval()
    return model, tokenizer, task


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    model, tokenizer, task = color_model(args)
    prompts = [ex.prompt for ex in task.test_set(args.batch, seed=0)]
    neurons = random_neuron_set(model, 0.10, seed=0)

    def run_generate() -> object:
        return generate(
            model, tokenizer, prompts, max_new_tokens=args.new_tokens, batch_size=args.batch
        )

    def run_steered() -> object:
        with steer(model, neurons, alpha=3.0, toward="gen"):
            return run_generate()

    ids, mask = pad_left(
        [encode_prompt(tokenizer, p, False) for p in prompts],
        tokenizer.pad_token_id,
        torch.device(args.device),
    )
    sites = all_sites(model, ["resid", "mlp"])

    @torch.no_grad()
    def run_forward() -> object:
        return model(input_ids=ids, attention_mask=mask)

    @torch.no_grad()
    def run_recorded() -> object:
        with record(model, sites) as rec:
            model(input_ids=ids, attention_mask=mask)
        return rec

    results = {
        "setup": vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "steered_generate_vs_generate": paired_ratio(run_generate, run_steered, args.repeats),
        "record_all_layers_vs_forward": paired_ratio(run_forward, run_recorded, args.repeats),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
