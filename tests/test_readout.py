"""The answer readout: the logit lens on each prompt's two answers, per layer."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel

from memgen.core.examples import Example
from memgen.core.hooks import record
from memgen.core.sites import all_sites, final_norm
from memgen.probe.probes import readout_accuracies
from memgen.record.readout import (
    answer_margins,
    first_tokens,
    warn_if_first_tokens_agree,
    warn_if_first_tokens_agree_on,
)


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


def test_answers_that_share_their_first_token_are_reported(caplog) -> None:  # type: ignore[no-untyped-def]
    # The scratch tokenizer keeps math's tag and `<scratch>` whole; split one character at
    # a time (as a pretrained BPE splits them after `<`), both answers start with `<`.
    import string

    from memgen.tasks import make_task
    from memgen.tasks.base import TokenizerSpec
    from memgen.tasks.math import SCRATCH_OPEN, TAGS
    from memgen.tasks.tokenizer import build_tokenizer

    whole = build_tokenizer(make_task("math").tokenizer_spec())
    tag, pad = TAGS[0], f"{SCRATCH_OPEN}\n1+2+c0=3 w3 c0"
    tags, pads = first_tokens(whole, [tag, tag]), first_tokens(whole, [pad, pad])
    assert warn_if_first_tokens_agree(whole, tags, pads, "record") == 0
    assert not caplog.records
    split = build_tokenizer(TokenizerSpec(kind="char", vocabulary=tuple(string.printable)))
    tags, pads = first_tokens(split, [tag, "x"]), first_tokens(split, [pad, pad])
    assert warn_if_first_tokens_agree(split, tags, pads, "steer") == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("steer: on 1 of 2 prompts") and "'<'" in message
    # On `behave`'s labelled answers: prompts whose two answers agree (or lack a
    # memorized one) are not counted.
    labelled = [(Example(p, pad, m, g), "gen") for p, m, g in
                [("a", tag, pad), ("b", pad, pad), ("c", "", pad), ("d", "x", pad)]]  # fmt: skip
    assert warn_if_first_tokens_agree_on(split, labelled, "specificity") == 1
    assert caplog.records[-1].getMessage().startswith("specificity: on 1 of 2 prompts")
