"""How much memory `finetune` holds per process, from the parameter counts (docs/TRAINING.md).

Per process, on the accelerator, with N = processes the parameters are sharded over (FSDP;
N = 1 for one process or DDP, where every process holds everything):

    weights        = P * b_w / N          P parameters in the model's dtype (b_w bytes each)
    gradients      = T * b_w / N          T trainable parameters; gradients have the weights' dtype
    optimizer      = 2 * T * b_w / N      AdamW's exp_avg and exp_avg_sq, in the weights' dtype
                                          (torch.optim.AdamW; finetune keeps no fp32 master copy)
    grad variance  = T * b_v / N          the running gradient sum (training.grad_variance_dtype:
                                          4 bytes float32, 2 bfloat16; 0 with track_grad_variance off)

plus activations (batch, sequence length and gradient checkpointing decide those; not counted) and,
in CPU memory, the distance-from-init copy: T * 4 / N bytes (float32).
"""

from __future__ import annotations

from dataclasses import dataclass

from curator.errors import ConfigError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# parameter counts of the models the shipped recipes name (from their model cards / configs)
KNOWN_PARAMS = {
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "google/gemma-2-9b": 9_241_705_984,
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process; ``gpu`` = weights + gradients + optimizer + grad_variance."""

    weights: float
    gradients: float
    optimizer: float
    grad_variance: float
    cpu: float

    @property
    def gpu(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.grad_variance

    def describe(self, unit: float = 1e9) -> str:
        return (
            f"weights {self.weights / unit:.1f} + gradients {self.gradients / unit:.1f} + AdamW "
            f"{self.optimizer / unit:.1f} + grad-variance {self.grad_variance / unit:.1f} = "
            f"{self.gpu / unit:.1f} GB"
        )


def training_memory(
    n_params: int,
    n_trainable: int | None = None,
    *,
    dtype: str = "bfloat16",
    grad_variance_dtype: str | None = "float32",
    shards: int = 1,
) -> MemoryEstimate:
    """The formula of the module docstring. ``grad_variance_dtype=None``: variance not tracked."""
    t = n_params if n_trainable is None else n_trainable
    bw = DTYPE_BYTES[dtype]
    bv = 0 if grad_variance_dtype is None else DTYPE_BYTES[grad_variance_dtype]
    return MemoryEstimate(
        weights=n_params * bw / shards,
        gradients=t * bw / shards,
        optimizer=2 * t * bw / shards,
        grad_variance=t * bv / shards,
        cpu=t * 4 / shards,
    )


def recipe_memory(recipe, n_params: int | None = None, shards: int = 1) -> MemoryEstimate:
    """`training_memory` for a recipe's full finetuning (its model must be in KNOWN_PARAMS or
    ``n_params`` given). LoRA recipes are not covered: their trainable count depends on the model."""
    n = n_params or KNOWN_PARAMS.get(recipe.model.name)
    if n is None:
        raise ConfigError(f"no parameter count known for {recipe.model.name!r}; pass n_params")
    if recipe.model.lora is not None:
        raise ConfigError("recipe_memory covers full finetuning (model.lora: null)")
    t = recipe.training
    return training_memory(
        n,
        dtype=recipe.model.dtype,
        grad_variance_dtype=t.grad_variance_dtype if t.track_grad_variance else None,
        shards=shards,
    )
