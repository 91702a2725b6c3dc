"""SFT with checkpoint callbacks, on accelerate (one process or `accelerate launch`).

Importing this package does not import torch; `finetune` does, when called.
"""

from curator.training.settings import TrainSettings
from curator.training.sft import CheckpointInfo, TrainResult, finetune

__all__ = ["TrainSettings", "finetune", "CheckpointInfo", "TrainResult"]
