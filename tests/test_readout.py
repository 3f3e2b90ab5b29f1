"""The answer readout: the logit lens on each prompt's two answers, per layer."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel

from memgen.core.forks import answer_forks
from memgen.core.hooks import record
from memgen.core.sites import all_sites, final_norm
from memgen.probe.probes import readout_accuracies
from memgen.record.readout import answer_margins, readout_tokens


@torch.no_grad()
def test_last_layer_margin_is_the_models_logit_difference(
    family_model: tuple[str, PreTrainedModel], token_ids: torch.Tensor
) -> None:
    _, model = family_model
    sites = all_sites(model, ["resid"])
    with record(model, sites) as rec:
        logits = model(input_ids=token_ids).logits[:, -1].float()
    resid = torch.stack([rec[site] for site in sites], dim=1).numpy()  # [B, L, D]
    mem_ids, gen_ids = np.array([5, 6, 7]), np.array([8, 6, 9])  # row 1: same first token
    margins = answer_margins(model, resid, mem_ids, gen_ids, batch_size=2)

    assert margins.shape == (3, len(sites)) and margins.dtype == np.float32
    assert np.isnan(margins[1]).all() and not np.isnan(margins[[0, 2]]).any()
    expected = logits[[0, 2], [5, 7]] - logits[[0, 2], [8, 9]]
    np.testing.assert_allclose(margins[[0, 2], -1], expected.numpy(), rtol=1e-4, atol=1e-5)
    # An earlier layer is read through the same final norm, not left as it is.
    unembed = model.get_output_embeddings()
    early = unembed(final_norm(model)(torch.from_numpy(resid[:, 0]))).float()
    np.testing.assert_allclose(
        margins[0, 0], (early[0, 5] - early[0, 8]).item(), rtol=1e-4, atol=1e-5
    )


def test_readout_accuracies_read_alone_and_within_pairs() -> None:
    # Two layers, three pairs (ids 0, 1, 2); rows alternate mem, gen.
    y = np.array([1, 0, 1, 0, 1, 0])
    pair_ids = np.array([0, 0, 1, 1, 2, 2])
    margins = np.array(
        [
            [0.5, 2.0],
            [1.0, -1.0],  # pair 0: layer 0 ranks gen above mem; layer 1 gets it right
            [0.2, 0.3],
            [-0.1, -0.3],
            [np.nan, 1.0],  # pair 2 is left out: a NaN margin
            [-1.0, -1.0],
        ]
    )
    rows = readout_accuracies(margins, y, pair_ids)

    assert [r["layer"] for r in rows] == [0, 1] and rows[0]["n_pairs"] == 2
    assert rows[0]["paired_accuracy"] == 0.5 and rows[1]["paired_accuracy"] == 1.0
    # Alone, sign > 0 means mem: layer 0 gets 0.5, 0.2 and -0.1 right, 1.0 wrong.
    assert rows[0]["accuracy"] == 0.75 and rows[1]["accuracy"] == 1.0
    assert rows[0]["ci_low"] < 0.75 < rows[0]["ci_high"]
    assert readout_accuracies(np.full((2, 1), np.nan), y[:2], pair_ids[:2]) == []


def test_the_readout_is_nan_where_both_answers_start_alike(caplog) -> None:  # type: ignore[no-untyped-def]
    # The lens at the last prompt token reads the answers' first token; split a character
    # at a time, math's tag and `<scratch>` both start with `<`, and it has nothing to read.
    import string

    from memgen.tasks.base import TokenizerSpec
    from memgen.tasks.math import SCRATCH_OPEN, TAGS
    from memgen.tasks.tokenizer import build_tokenizer

    split = build_tokenizer(TokenizerSpec(kind="char", vocabulary=tuple(string.printable)))
    tag, pad = TAGS[0], f"{SCRATCH_OPEN}\n1+2+c0=3 w3 c0"
    forks = answer_forks(split, [tag, "x", pad], [pad, pad, pad])
    mem, gen = readout_tokens(split, forks)
    assert mem.tolist() == [-1, split.convert_tokens_to_ids("x"), -1]
    assert gen.tolist() == [-1, split.convert_tokens_to_ids("<"), -1]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("record: on 1 of 3 prompts") and "'<'" in message
