"""A standard Hugging Face tokenizer for a synthetic task, built from its `TokenizerSpec`.

The result is a `PreTrainedTokenizerFast`: it saves with `save_pretrained`, loads with
`AutoTokenizer.from_pretrained(path)` and works with `model.generate`.
"""

from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from memgen.tasks.base import TokenizerSpec

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


def build_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*SPECIALS, *spec.vocabulary]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    if spec.kind == "word":
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    else:
        # Multi-character units first (longest first), then whole words where no letter
        # touches them (a mixture's "is" must not split a cipher's "...IS..." or a
        # "this"), then any single character, whitespace included, so decoding is plain
        # concatenation.
        units = [re.escape(unit) for unit in sorted(spec.units, key=len, reverse=True)]
        words = [
            rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])"
            for word in sorted(spec.words, key=len, reverse=True)
        ]
        pattern = "|".join([*units, *words, r"[\s\S]"])
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",  # decoder-only generation pads on the left
    )
    return fast
