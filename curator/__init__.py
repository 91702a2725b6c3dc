"""curator: active data curation for finetuning LLMs on reasoning tasks.

The public API, importable from the top level without paying for torch/transformers/mlflow until
a name is first used::

    from curator import load_recipe, run_recipe, load_examples, premem_acc
"""

from __future__ import annotations

from curator.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "Example": "curator.data.example",
    "PromptFormat": "curator.data.format",
    "load_examples": "curator.data.loaders",
    "get_grader": "curator.data.grading",
    "SyntheticTask": "curator.data.synthetic",
    # models, sampling, training
    "load_model": "curator.models",
    "LoraSettings": "curator.models.lora",
    "SamplingParams": "curator.sampling.base",
    "make_sampler": "curator.sampling",
    "TrainSettings": "curator.training.settings",
    "finetune": "curator.training",
    "train_and_track": "curator.engine",
    "make_provider": "curator.sampling.providers",
    # dynamics
    "Ledger": "curator.dynamics.ledger",
    "read_ledger": "curator.dynamics.ledger",
    "premem_acc": "curator.dynamics.metrics",
    "dataset_premem": "curator.dynamics.metrics",
    "DynamicsTracker": "curator.dynamics.tracker",
    "track_premem": "curator.engine",
    # strategies
    "Strategy": "curator.strategy",
    "SelectionContext": "curator.strategy",
    "strategies": "curator.strategy",
    "top_k": "curator.strategy",
    # loop, recipes, tracking
    "Recipe": "curator.recipes",
    "load_recipe": "curator.recipes",
    "run_recipe": "curator.run",
    "compare_run_dir": "curator.tracking.compare",
    "compare_mlflow": "curator.tracking.compare",
    "CuratorError": "curator.errors",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
