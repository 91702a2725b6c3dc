"""Model loading (hub ids, local dirs, GGUF, aliases), the tiny test model, and LoRA.

Importing this package is cheap: torch, transformers and peft load inside the functions.
"""

import warnings

from curator.models.loading import ALIASES, LoadedModel, load_model, materialize, resolve_dtype, save_model
from curator.models.lora import LoraSettings, apply_lora

__all__ = [
    "ALIASES",
    "LoadedModel",
    "LoraSettings",
    "apply_lora",
    "load_model",
    "materialize",
    "resolve_dtype",
    "save_model",
]

# peft (get_peft_model, PeftModel.from_pretrained) reads transformers' deprecated
# `is_gradient_checkpointing` and the FutureWarning lands on every LoRA run; not ours to fix
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
