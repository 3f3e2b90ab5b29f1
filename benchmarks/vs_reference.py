"""memgen against the reference implementation's way of doing the same work, as ratios.

    python benchmarks/vs_reference.py                  # GPT-2 4x128 (the default run's size)
    python benchmarks/vs_reference.py --family llama --layers 8 --width 256 --device cuda

Each comparison does the same work both ways in one process, on the same inputs, checks
that the outputs agree, and reports the speed-up, reference seconds / memgen seconds
(`loop_s` / `batched_s`, median over alternating repeats; the machines are shared):

  * neuron scores: `scipy.stats.pearsonr` once per neuron, in a Python loop (as the
    official code scores neurons) vs memgen's vectorised `pearson` scorer;
  * steered generation: one prompt at a time, with a forward hook per layer that loops in
    Python over that layer's selected neuron indices (the official code's pattern) vs
    `memgen.steer` on batches of prompts;
  * recording: `output_hidden_states=True` one prompt at a time vs memgen's batched
    recording of the same residual stream at the last token.

`--memory 3000 30000` adds the peak anonymous memory of a fresh process recording that
many pairs into memory-mapped arrays and scoring them: flat as the pairs grow 10x means
the activations stream through memory instead of living in it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from overhead import color_model, model_parser, random_neuron_set  # type: ignore[import-not-found]
from scipy import stats
from steer_batching import paired  # type: ignore[import-not-found]

from memgen.core.generation import encode_prompt, generate
from memgen.core.neuron_set import NeuronSet
from memgen.neurons.scores import score
from memgen.record.stage import allocate, record_last_token
from memgen.steering.api import steer
from memgen.steering.methods import sign_of


def scores_loop(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The reference: one `pearsonr` call per neuron."""
    flat = x.reshape(len(x), -1)
    out = np.empty(flat.shape[1])
    for j in range(flat.shape[1]):
        out[j] = stats.pearsonr(flat[:, j], y).statistic
    return out.reshape(x.shape[1:])


def compare_scores(pairs: int, layers: int, width: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (2 * pairs, layers, width)).astype(np.float32)
    y = np.tile([1, 0], pairs)
    x[y == 1, :, : width // 10] += 0.3  # some neurons lean memorization
    ours = score("pearson", x, y)
    max_diff = float(np.abs(scores_loop(x, y) - ours).max())
    result = paired(lambda: scores_loop(x, y), lambda: score("pearson", x, y), repeats)
    return result | {"rows": 2 * pairs, "neurons": layers * width, "max_abs_diff": max_diff}


def reference_hooks(model: torch.nn.Module, neurons: NeuronSet, alpha: float, toward: str) -> list:
    """One hook per steered layer; a Python loop adds each neuron's shift at the last token."""
    blocks = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    sign = sign_of(toward)  # type: ignore[arg-type]
    handles = []
    for layer in sorted(set(neurons.layers.tolist())):
        rows = np.flatnonzero(neurons.layers == layer)
        indices = neurons.neurons[rows].tolist()
        deltas = (sign * alpha * neurons.nmd[rows]).tolist()

        def hook(module: torch.nn.Module, args: tuple, output: object, i=indices, d=deltas) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            for index, delta in zip(i, d, strict=True):
                hidden[:, -1, index] += delta

        handles.append(blocks[layer].register_forward_hook(hook))
    return handles


def compare_steering(model, tokenizer, prompts, neurons, new_tokens, repeats) -> dict:
    def reference() -> list[str]:
        handles = reference_hooks(model, neurons, alpha=3.0, toward="gen")
        try:
            return [generate(model, tokenizer, [p], max_new_tokens=new_tokens)[0] for p in prompts]
        finally:
            for handle in handles:
                handle.remove()

    def ours() -> list[str]:
        with steer(model, neurons, alpha=3.0, toward="gen"):
            return generate(model, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=128)

    same = sum(a == b for a, b in zip(reference(), ours(), strict=True))
    result = paired(reference, ours, repeats)
    return result | {"prompts": len(prompts), "same_output": same, "selected": len(neurons)}


def compare_recording(model, tokenizer, prompts, repeats) -> dict:
    device = next(model.parameters()).device

    @torch.no_grad()
    def reference() -> np.ndarray:
        rows = []
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt, False)], device=device)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            # hidden_states[i + 1] is block i's output; the last one has the final norm on.
            rows.append(torch.stack([h[0, -1] for h in hidden[1:-1]]).float().cpu().numpy())
        return np.stack(rows)

    def ours() -> np.ndarray:
        return record_last_token(model, tokenizer, prompts, ["resid"], False, 128)["resid"]

    max_diff = float(np.abs(reference() - ours()[:, :-1]).max())
    result = paired(reference, ours, repeats)
    return result | {"prompts": len(prompts), "max_abs_diff": max_diff}


class PeakAnonymous:
    """Peak anonymous resident memory (MB), sampled every 5 ms by a thread.

    Anonymous memory leaves out the file-backed pages of the memory-mapped activations,
    which the kernel can drop at any time: what is left is what the process must hold.
    """

    def __init__(self) -> None:
        self.peak, self._stop = self.now(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakAnonymous:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: record `--pairs` pairs into memory-mapped arrays, then score them."""
    model, tokenizer, task = color_model(args)
    prompts = [ex.prompt for ex in task.test_set(2 * args.pairs, seed=1)]
    labels = np.tile([1, 0], args.pairs)
    with tempfile.TemporaryDirectory() as folder:
        shapes = {k: a.shape for k, a in allocate(model, ["resid", "mlp"], 1).items()}
        out = {
            kind: np.lib.format.open_memmap(
                f"{folder}/{kind}.npy", "w+", np.float32, (len(prompts), *shape[1:])
            )
            for kind, shape in shapes.items()
        }
        start = PeakAnonymous.now()
        with PeakAnonymous() as recording:
            record_last_token(model, tokenizer, prompts, ["resid", "mlp"], False, 128, out=out)
        for array in out.values():
            array.flush()
        with PeakAnonymous() as scoring:
            for kind in out:
                score("pearson", np.load(f"{folder}/{kind}.npy", mmap_mode="r"), labels)
        size = sum(a.nbytes for a in out.values()) / 2**20
        print(json.dumps({"pairs": args.pairs, "activations_mb": round(size, 1),
                          "start_mb": round(start, 1), "record_peak_mb": round(recording.peak, 1),
                          "score_peak_mb": round(scoring.peak, 1)}))  # fmt: skip


def memory_curve(args: argparse.Namespace, sizes: list[int]) -> list[dict]:
    rows = []
    for pairs in sizes:
        command = [sys.executable, __file__, "--memory-child", "--pairs", str(pairs),
                   "--family", args.family, "--layers", str(args.layers),
                   "--width", str(args.width), "--device", args.device]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=600, help="rows / 2 for the scores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--memory", type=int, nargs="+", metavar="PAIRS", help="peak memory at these pair counts"
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    model, tokenizer, task = color_model(args)
    prompts = [ex.prompt for ex in task.test_set(args.prompts, seed=0)]
    neurons = random_neuron_set(model, 0.10, seed=0)
    results = {
        "setup": vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "scores": compare_scores(args.pairs, args.layers, args.width, args.repeats),
        "steered_generation": compare_steering(
            model, tokenizer, prompts, neurons, args.new_tokens, args.repeats
        ),
        "recording": compare_recording(model, tokenizer, prompts, args.repeats),
    }
    if args.memory:
        results["memory"] = memory_curve(args, args.memory)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
