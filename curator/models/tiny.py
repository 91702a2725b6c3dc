"""A tiny random-initialised Llama-shaped model with a character-level tokenizer, built in-process.

For unit tests and smoke runs: no download, no files, deterministic for a seed, loads in tens of
milliseconds. It generates gibberish, but exercises exactly the code paths a real model does
(LlamaForCausalLM, a fast tokenizer with BOS/EOS/PAD and a chat template, KV cache, LoRA targets).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from curator.data.tokenizer import piece_tokenizer

# one token per printable ASCII character plus newline and tab; anything else maps to <unk>
CHARS = list(string.printable[:95]) + ["\n", "\t"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer() -> Any:
    """Character-level PreTrainedTokenizerFast: BOS prepended, no EOS appended, PAD id 0."""
    # every character is its own pre-token ([\s\S] also matches newlines, unlike ".")
    fast = piece_tokenizer(CHARS, r"[\s\S]", model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def decoder_fields(tokenizer: Any, *, layers: int, hidden: int, heads: int, kv_heads: int, init_std: float) -> dict:
    """The config fields every tiny decoder shares (Llama here, each MoE layout in
    `curator.models.moe`): sizes, untied embeddings, and the tokenizer's special ids."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def seeded_model(build: Callable[[], Any], seed: int, tokenizer: Any) -> Any:
    """``build()`` under a private RNG stream seeded with `seed` (building the model must not move
    the caller's global torch RNG), generating with the tokenizer's special ids, in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model.eval()


def tiny_model(
    seed: int = 0,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    init_std: float = 0.1,
    tokenizer: Any = None,
) -> Any:
    """A random-init LlamaForCausalLM sized for the tiny tokenizer; same seed -> same weights.

    ``init_std`` is larger than Llama's 0.02 so that next-token distributions are peaked rather
    than near-uniform: greedy decoding then has clear winners and is stable under batching noise.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    fields = decoder_fields(tokenizer, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, init_std=init_std)
    config = LlamaConfig(intermediate_size=2 * hidden, **fields)
    return seeded_model(lambda: LlamaForCausalLM(config), seed, tokenizer)
