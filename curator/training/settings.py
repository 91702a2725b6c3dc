"""Training settings and the checkpoint schedule they imply.

Pure Python (no torch import), so that a recipe can be validated — including "this schedule
produces no checkpoint" — before any model loads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from curator.errors import ConfigError


def launch_world_size() -> int:
    """Processes in the current launch (``WORLD_SIZE`` set by accelerate launch / torchrun), else 1."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


LR_SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw",)


@dataclass(frozen=True)
class TrainSettings:
    """How `finetune` trains. Each field's ``metadata["help"]`` is its user-facing description."""

    epochs: int = field(default=3, metadata={"help": "Passes over the training set."})
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Peak learning rate (after warmup). LoRA usually wants ~1e-4..1e-3, full finetuning ~1e-5."},
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "Examples per micro-batch on each process. The global batch of one optimizer step is "
            "batch_size * grad_accum * number of processes."
        },
    )
    grad_accum: int = field(
        default=1,
        metadata={
            "help": "Micro-batches accumulated per optimizer step (higher: larger effective batch, same memory)."
        },
    )
    max_length: int = field(
        default=512,
        metadata={
            "help": "Maximum prompt+target tokens; longer targets are cut at the right (counted in "
            "TrainResult.n_truncated). A prompt that alone fills max_length is an error."
        },
    )
    lr_scheduler: str = field(
        default="constant",
        metadata={"help": "Learning-rate schedule after warmup: 'constant', 'linear' (to 0) or 'cosine' (to 0)."},
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Fraction of all optimizer steps spent warming the learning rate up linearly from 0."},
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay, applied to matrices only (not to biases or norm weights)."}
    )
    optimizer: str = field(default="adamw", metadata={"help": "Optimizer: 'adamw' (torch.optim.AdamW)."})
    max_grad_norm: float = field(
        default=1.0,
        metadata={"help": "Clip the global gradient norm to this value before each step; 0 disables clipping."},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seeds torch/numpy/python RNGs (dropout) and the per-epoch data order. Same seed, "
            "same data, same processes: identical weights and losses."
        },
    )
    checkpoint_every: int | str = field(
        default="epoch",
        metadata={
            "help": "'epoch' (one checkpoint at the end of each epoch, the paper's schedule) or an int N: "
            "a checkpoint every N optimizer steps (the end of training is a checkpoint only if "
            "the total step count is a multiple of N)."
        },
    )
    save_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Write the model (the adapter for LoRA) and tokenizer to output_dir/checkpoint-STEP "
            "at each checkpoint. Off: checkpoints are only callbacks on the live model."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where saved checkpoints go; required when save_checkpoints is true."}
    )
    track_grad_variance: bool = field(
        default=True,
        metadata={
            "help": "Compute the grad_variance metric (costs one float32 copy of the trainable "
            "parameters and one pass over the gradients per optimizer step)."
        },
    )
    grad_variance_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the grad_variance running-sum buffer (one per trainable parameter): "
            "'float32' (4 bytes/param) or 'bfloat16' (2 bytes/param, ~3 significant digits)."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, ~30% slower."}
    )

    def __post_init__(self):
        problems = []

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("epochs", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                problems.append(f"training.{name} must be an integer >= 1, got {v!r}")
        if not is_int(self.max_length) or self.max_length < 2:
            problems.append(f"training.max_length must be an integer >= 2, got {self.max_length!r}")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            problems.append(f"training.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(
                f"training.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}; got {self.lr_scheduler!r}"
            )
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            problems.append(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            problems.append(f"training.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.max_grad_norm, (int, float)) or self.max_grad_norm < 0:
            problems.append(f"training.max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"training.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if not is_int(self.seed):
            problems.append(f"training.seed must be an integer, got {self.seed!r}")
        ce = self.checkpoint_every
        if isinstance(ce, str) and ce.strip().isdigit():  # "--set training.checkpoint_every=50"
            ce = int(ce)
            object.__setattr__(self, "checkpoint_every", ce)
        if not (ce == "epoch" or (is_int(ce) and ce >= 1)):
            problems.append(
                f"training.checkpoint_every must be 'epoch' or an integer number of optimizer steps >= 1, got {ce!r}"
            )
        if self.grad_variance_dtype not in ("float32", "bfloat16"):
            problems.append(
                f"training.grad_variance_dtype must be 'float32' or 'bfloat16', got {self.grad_variance_dtype!r}"
            )
        if self.save_checkpoints and not self.output_dir:
            problems.append(
                "training.save_checkpoints is true but training.output_dir is not set; set an "
                "output_dir or save_checkpoints=false"
            )
        if problems:
            raise ConfigError(problems)

    # -- the schedule ---------------------------------------------------------------------------
    # num_processes=None means the current launch's process count (WORLD_SIZE), so that code
    # validating a schedule before training agrees with what finetune will do under accelerate.

    def micro_batches_per_epoch(self, n_examples: int, num_processes: int | None = None) -> int:
        """Global micro-batches per epoch (each one is batch_size examples on every process)."""
        return math.ceil(n_examples / (self.batch_size * (num_processes or launch_world_size())))

    def steps_per_epoch(self, n_examples: int, num_processes: int | None = None) -> int:
        """Optimizer steps per epoch; the last step of an epoch may accumulate fewer micro-batches."""
        return math.ceil(self.micro_batches_per_epoch(n_examples, num_processes) / self.grad_accum)

    def total_steps(self, n_examples: int, num_processes: int | None = None) -> int:
        return self.epochs * self.steps_per_epoch(n_examples, num_processes)

    def checkpoint_schedule(self, n_examples: int, num_processes: int | None = None) -> list[int]:
        """Optimizer steps (1-based, counted from the start of training) at which checkpoints fall.

        Raises ConfigError for an empty training set or a schedule with no checkpoint.
        """
        if n_examples < 1:
            raise ConfigError("the training set is empty; give finetune at least one example")
        num_processes = num_processes or launch_world_size()
        spe = self.steps_per_epoch(n_examples, num_processes)
        total = self.epochs * spe
        if self.checkpoint_every == "epoch":
            return [spe * (e + 1) for e in range(self.epochs)]
        every = int(self.checkpoint_every)
        steps = list(range(every, total + 1, every))
        if not steps:
            raise ConfigError(
                f"training.checkpoint_every={every} steps produces no checkpoint: training has only {total} "
                f"optimizer steps ({n_examples} examples, batch_size={self.batch_size}, grad_accum="
                f"{self.grad_accum}, {num_processes} process(es), {self.epochs} epochs); set "
                f"checkpoint_every <= {total} or 'epoch'"
            )
        return steps

    def n_checkpoints(self, n_examples: int, num_processes: int | None = None) -> int:
        return len(self.checkpoint_schedule(n_examples, num_processes))

    def epoch_at(self, step: int, n_examples: int, num_processes: int | None = None) -> float:
        """Fractional epoch after `step` optimizer steps: whole epochs plus the fraction of the
        current epoch's micro-batches done (so an epoch's last step reads exactly e.0)."""
        spe = self.steps_per_epoch(n_examples, num_processes)
        mb = self.micro_batches_per_epoch(n_examples, num_processes)
        done_epochs, in_epoch = divmod(step, spe)
        return done_epochs + min(in_epoch * self.grad_accum, mb) / mb
