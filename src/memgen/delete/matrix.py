"""Per memory: are the neurons chosen on one memory's pairs that memory's alone?

    memories = memory_rows(pairs, held, min_pairs=5)
    matrix = memory_matrix(bench, recorded, memories, "attribution", "mean", 0.01)

A memory is one memorized answer (a cipher or math trigger's tag). For each memory i,
the scorer ranks the MLP neurons on i's flipped pairs only; deleting its top set, every
memory j's held-out prompts are answered again: `kept[i][j]` is the share of j's
memorized answers still given. Neurons that are memory i's own forget i (the diagonal)
and keep the others; neurons shared by every memory forget all alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memgen.core.examples import Example, PairRows
from memgen.core.recorded import Recorded
from memgen.core.rows import MemoryMatrix
from memgen.core.stats import rank_p_value
from memgen.delete.measure import DeletionBench, HeldOut
from memgen.localize.plant import Neurons
from memgen.neurons.attribution import site_score
from memgen.neurons.selection import select_top

RELABELLINGS = 9999  # permutations behind a matrix's p-value: it can reach 1e-4


@dataclass(frozen=True)
class Memory:
    answer: str  # the memorized answer
    rows: np.ndarray  # its pairs' rows in the record (both members)
    prompts: list[Example]  # its held-out prompts answered by memory


def memory_rows(pairs: PairRows, held: HeldOut, min_pairs: int) -> list[Memory]:
    """Every memory with `min_pairs` flipped pairs and a held-out prompt, by answer."""
    if pairs.answers is None:
        return []
    mem_answers = np.asarray(pairs.answers[0], dtype=object)
    memories = []
    for answer in sorted({a for a in pairs.answers[0] if a}):
        rows = np.flatnonzero(mem_answers == answer)
        prompts = [ex for ex in held.mem if ex.mem_answer == answer]
        if len(rows) >= 2 * min_pairs and prompts:
            memories.append(Memory(answer, rows, prompts))
    return memories


def _own_most(kept: np.ndarray) -> float:
    """The share of rows whose diagonal is the row's least kept (a tie counts 1/ties)."""
    hits = [
        float(row[i] == row.min()) / int((row == row.min()).sum()) for i, row in enumerate(kept)
    ]
    return float(np.mean(hits))


def relabelled_p_value(kept: np.ndarray, draws: int, seed: int) -> float:
    """Rank p-value of the diagonal's mean kept among `draws` relabellings: each row's
    neurons credited to a random other memory (a permutation of the columns).

    Small when each memory's own neurons forget it more than they forget the others.
    """
    rng = np.random.default_rng(seed)
    n = len(kept)
    observed = float(np.diag(kept).mean())
    shuffled = [float(kept[np.arange(n), rng.permutation(n)].mean()) for _ in range(draws)]
    return rank_p_value(-observed, [-value for value in shuffled])


def memory_matrix(
    bench: DeletionBench,
    recorded: Recorded,
    memories: Sequence[Memory],
    scorer: str,
    ablation: str,
    size: float,
    seed: int = 0,
) -> MemoryMatrix:
    everyone = [ex for memory in memories for ex in memory.prompts]
    bounds = np.cumsum([0, *(len(memory.prompts) for memory in memories)])
    kept = np.zeros((len(memories), len(memories)))
    for i, memory in enumerate(memories):
        top = Neurons(*select_top(site_score(scorer, recorded, "mlp", memory.rows), size))
        hits = bench.memorized_kept(top, ablation, everyone)
        kept[i] = [hits[a:b].mean() for a, b in itertools.pairwise(bounds)]
    n = len(memories)
    off = kept[~np.eye(n, dtype=bool)]
    return MemoryMatrix(
        scorer=scorer,
        ablation=ablation,  # type: ignore[arg-type]
        size=size,
        memories=[memory.answer for memory in memories],
        n_pairs=[len(memory.rows) // 2 for memory in memories],
        n_prompts=[len(memory.prompts) for memory in memories],
        kept=kept.tolist(),
        diagonal=float(np.diag(kept).mean()) if n else 1.0,
        off_diagonal=float(off.mean()) if off.size else 1.0,
        own_most=_own_most(kept) if n else 0.0,
        chance=1.0 / n if n else 0.0,
        p_value=relabelled_p_value(kept, RELABELLINGS, seed) if n > 1 else 1.0,
    )
