"""Samplers: the protocol (`Sampler`, `SamplingParams`) and its backends.

`hf` (transformers; CPU or GPU, the default) and `vllm` (optional extra). Backends are looked up
through a registry, so a third party can add one under the entry-point group ``curator.samplers``.
"""

from __future__ import annotations

from typing import Any

from curator.registry import Registry
from curator.sampling.base import Sampler, SamplingParams

samplers: Registry = Registry("sampler backend", entry_point_group="curator.samplers")
samplers.register("hf", "curator.sampling.hf:HFSampler")
samplers.register("vllm", "curator.sampling.vllm:VLLMSampler")


def make_sampler(backend: str, loaded_or_path: Any, **kw: Any) -> Sampler:
    """Build a sampler: ``backend`` is a registered name ("hf", "vllm") or a ``module:Class`` path;
    ``loaded_or_path`` a `LoadedModel` or a `load_model` spec. ``kw`` goes to the backend."""
    cls = samplers.get(backend)
    return cls.from_loaded(loaded_or_path, **kw)


def __getattr__(name: str) -> Any:
    # HFSampler / VLLMSampler import lazily, like the registry's targets: every module that imports
    # curator.sampling.base imports this package, and should not load both backends (and models) with it
    if name == "HFSampler":
        from curator.sampling.hf import HFSampler  # lazy: see above

        return HFSampler
    if name == "VLLMSampler":
        from curator.sampling.vllm import VLLMSampler  # lazy: see above

        return VLLMSampler
    raise AttributeError(f"module 'curator.sampling' has no attribute {name!r}")


__all__ = ["HFSampler", "Sampler", "SamplingParams", "VLLMSampler", "make_sampler", "samplers"]
