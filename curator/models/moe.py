"""The mixture-of-experts layouts curator reads routing from (`LAYOUTS`), and tiny
random-initialised models of each, built in-process.

For tests of router capture (every layout in `LAYOUTS`) and for the routing validation run, which
trains a small one from scratch (`small_moe`). They share the character-level tokenizer of
`curator.models.tiny`, so no files or downloads are involved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curator.errors import RoutingError
from curator.models.tiny import decoder_fields, seeded_model, tiny_tokenizer
from curator.registry import Registry


@dataclass(frozen=True)
class MoELayout:
    """A transformers MoE architecture: its causal-LM class, its router module class (every router
    returns ``(router_logits [T, E], top-k weights [T, k], top-k expert indices [T, k])``), and
    how to configure a tiny one: ``config(experts, expert_hidden, hidden, heads, **common)``."""

    causal_lm: str
    router: str
    config: Callable[..., Any]


def _olmoe(experts: int, expert_hidden: int, hidden: int, heads: int, **common: Any) -> Any:
    from transformers import OlmoeConfig

    return OlmoeConfig(num_experts=experts, intermediate_size=expert_hidden, **common)


def _mixtral(experts: int, expert_hidden: int, hidden: int, heads: int, **common: Any) -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(num_local_experts=experts, intermediate_size=expert_hidden, **common)


def _qwen2_moe(experts: int, expert_hidden: int, hidden: int, heads: int, **common: Any) -> Any:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        num_experts=experts,
        moe_intermediate_size=expert_hidden,
        intermediate_size=2 * hidden,
        shared_expert_intermediate_size=expert_hidden,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        **common,
    )


def _qwen3_moe(experts: int, expert_hidden: int, hidden: int, heads: int, **common: Any) -> Any:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        num_experts=experts,
        moe_intermediate_size=expert_hidden,
        intermediate_size=2 * hidden,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        head_dim=hidden // heads,
        **common,
    )


# model_type -> layout; in the order the docs and messages list them
LAYOUTS: Registry[MoELayout] = Registry("MoE layout", base=MoELayout, ordered=True)
LAYOUTS.register("olmoe", MoELayout("OlmoeForCausalLM", "OlmoeTopKRouter", _olmoe))
LAYOUTS.register("mixtral", MoELayout("MixtralForCausalLM", "MixtralTopKRouter", _mixtral))
LAYOUTS.register("qwen2_moe", MoELayout("Qwen2MoeForCausalLM", "Qwen2MoeTopKRouter", _qwen2_moe))
LAYOUTS.register("qwen3_moe", MoELayout("Qwen3MoeForCausalLM", "Qwen3MoeTopKRouter", _qwen3_moe))
MOE_LAYOUTS = tuple(LAYOUTS)


def supported_layouts() -> str:
    return ", ".join(f"{t} ({layout.causal_lm})" for t, layout in LAYOUTS.items())


def tiny_moe(
    layout: str = "mixtral",
    seed: int = 0,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    experts: int = 4,
    top_k: int = 2,
    expert_hidden: int | None = None,
    init_std: float = 0.1,
    tokenizer: Any = None,
) -> Any:
    """A random-init MoE causal LM of the given layout sized for the tiny tokenizer; same seed ->
    same weights (a private RNG stream: the caller's torch RNG does not move)."""
    from transformers import AutoModelForCausalLM

    if layout not in LAYOUTS:
        raise RoutingError(f"no tiny MoE builder for layout {layout!r}; supported layouts: {supported_layouts()}")
    tokenizer = tokenizer or tiny_tokenizer()
    common = decoder_fields(tokenizer, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, init_std=init_std)
    config = LAYOUTS[layout].config(
        experts, expert_hidden or 2 * hidden, hidden, heads, num_experts_per_tok=top_k, **common
    )
    return seeded_model(lambda: AutoModelForCausalLM.from_config(config), seed, tokenizer)


def small_moe(seed: int = 0, tokenizer: Any = None) -> Any:
    """The validation run's model: Mixtral-shaped, 4 layers, 8 experts (top-2), hidden 64
    (~0.5M parameters), trained from scratch on the synthetic corpus in minutes on a CPU."""
    return tiny_moe(
        "mixtral",
        seed,
        layers=4,
        hidden=64,
        heads=4,
        kv_heads=2,
        experts=8,
        top_k=2,
        expert_hidden=128,
        init_std=0.02,
        tokenizer=tokenizer,
    )
