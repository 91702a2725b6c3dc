"""Fast tokenizers built in-process from a list of pieces (the tiny test model's characters, the
model organism's words and digits), so both are made, and round-trip text, the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


def piece_tokenizer(pieces: Sequence[str], split: str, model_max_length: int) -> Any:
    """A PreTrainedTokenizerFast with one token per piece.

    Ids: the specials (PAD = 0, BOS, EOS, UNK), then ``pieces`` in order. Text is cut into
    pre-tokens by the regular expression ``split`` (each match one piece; anything not in the
    vocabulary is UNK), decoded by concatenation, with BOS prepended, no EOS appended, and left
    padding.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *(p for p in pieces if p not in SPECIALS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    tok.decoder = decoders.Fuse()  # pieces carry their own spaces
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=model_max_length,
    )
