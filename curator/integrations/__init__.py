"""Bring your own trainer: PreMemAcc inside transformers' Trainer and TRL runs, and curator
strategies choosing the prompts of RL runs (TRL's GRPOTrainer, verl).

Everything is imported lazily: ``import curator.integrations`` does not import torch,
transformers or TRL. See docs/INTEGRATIONS.md.
"""

from __future__ import annotations

from curator.export import trl_dataset
from curator.lazy import lazy_exports

__all__ = [
    "CuratedSampler",
    "CuratorSampler",
    "GRPOCuration",
    "PreMemCallback",
    "RolloutCurator",
    "grader_reward",
    "rollout_pool",
    "trl_dataset",
]

# lazy: each pulls in torch and transformers (PreMemCallback, the GRPO pieces) or torch (verl, rl)
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "PreMemCallback": "curator.integrations.trainer",
        "GRPOCuration": "curator.integrations.grpo",
        "CuratedSampler": "curator.integrations.grpo",
        "grader_reward": "curator.integrations.grpo",
        "CuratorSampler": "curator.integrations.verl",
        "RolloutCurator": "curator.integrations.rl",
        "rollout_pool": "curator.integrations.rl",
    },
)
