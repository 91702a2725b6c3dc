"""LoRA adapters through peft."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curator.errors import ConfigError


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters.

    Attributes:
        r: adapter rank (higher: more capacity, more memory).
        alpha: scaling numerator; the update is scaled by alpha / r.
        dropout: dropout on the adapter input during training.
        target_modules: ``"all-linear"`` (every linear layer except the output head) or module
            names such as ``("q_proj", "v_proj")``.
    """

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self):
        problems = []
        if not isinstance(self.r, int) or self.r < 1:
            problems.append(f"lora.r must be an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            problems.append(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        tm = self.target_modules
        if isinstance(tm, (list, tuple)):
            if not tm or not all(isinstance(m, str) and m for m in tm):
                problems.append(
                    f"lora.target_modules must be 'all-linear' or a non-empty list of module names, got {tm!r}"
                )
            object.__setattr__(self, "target_modules", tuple(tm))  # lists from YAML become hashable
        elif not isinstance(tm, str) or not tm:
            problems.append(f"lora.target_modules must be 'all-linear' or a list of module names, got {tm!r}")
        if problems:
            raise ConfigError(problems)


def apply_lora(model: Any, settings: LoraSettings | None = None) -> Any:
    """Wrap ``model`` in a peft LoRA model (only adapter weights trainable); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    s = settings or LoraSettings()
    target = s.target_modules if isinstance(s.target_modules, str) else list(s.target_modules)
    config = LoraConfig(
        r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=target, bias="none", task_type="CAUSAL_LM"
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"lora.target_modules {s.target_modules!r} does not match the model "
            f"({str(e).splitlines()[0]}); linear modules here: {', '.join(names)}"
        ) from e
