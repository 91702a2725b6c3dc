"""What the tests share: the command for N CPU processes (gloo), the tiny recipe the end-to-end
tests run, transformers' own greedy decoding (the reference curator's samplers must match), and a
planted generative source for the strategies' generator mode."""

from __future__ import annotations

import copy
from typing import Any

from curator.data.example import Example
from curator.data.format import encode_prompt
from curator.distributed import launch_cmd

__all__ = ["VariantSource", "greedy_ids", "launch_cmd", "tiny_recipe"]

# the smallest recipe a run finishes in seconds on a CPU: tiny model, easy synthetic data, two
# rounds; each test changes what it is about with `tiny_recipe(section={...})`
TINY: dict[str, Any] = {
    "model": {"name": "tiny-random", "lora": None},
    "data": {
        "pool": "synthetic:easy?n=30&seed=1",
        "test": "synthetic:easy?n=6&seed=2",
        "seed_size": 4,
        "grader": "gsm8k",
    },
    "training": {"epochs": 1, "learning_rate": 0.003, "batch_size": 4, "max_length": 512},
    "dynamics": {"samples": 2, "max_new_tokens": 8, "batch_size": 16},
    "evaluation": {"max_new_tokens": 8},
    "loop": {"rounds": 2, "budget": 4},
    "strategies": [{"name": "iid"}],
}


def tiny_recipe(**changes: Any) -> dict[str, Any]:
    """A fresh copy of `TINY` with `changes`: a dict merges into the section of that name (its
    keys replace the section's), anything else replaces the top-level key."""
    recipe = copy.deepcopy(TINY)
    for key, value in copy.deepcopy(changes).items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key].update(value)
        else:
            recipe[key] = value
    return recipe


def greedy_ids(loaded: Any, prompt: str, k: int = 12) -> list[int]:
    """The `k` token ids ``loaded.model.generate`` decodes greedily after `prompt`."""
    import torch  # only the tests that decode pay for it

    ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
    out = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=k,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


class VariantSource:
    """A generative source whose variants are named ``<parent id>-<tag><j>`` (their
    ``meta["parent_id"]`` the parent), recording every call as (parent ids, n_per)."""

    generative = True

    def __init__(self, tag: str = "v"):
        self.tag = tag
        self.calls: list[tuple[list[str], int]] = []

    def similar(self, examples: Any, n_per: int, seed: int) -> list[Example]:
        self.calls.append(([x.id for x in examples], n_per))
        return [
            Example(
                id=f"{x.id}-{self.tag}{j}",
                question=f"like {x.id} #{j}",
                solution="s\n#### 1",
                answer="1",
                meta={"parent_id": x.id},
            )
            for x in examples
            for j in range(n_per)
        ]
