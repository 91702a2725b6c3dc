"""Sampler providers: who owns the sampler while a model trains.

A round measures the model at every checkpoint. What a sampler over "the model's current weights"
is depends on the backend:

- `HFProvider`: an `HFSampler` reads the live torch model, so the sampler is built once per model
  and simply reused; nothing is copied.
- `VLLMProvider` (`curator.sampling.vllm`): vLLM keeps its own copy of the weights in its engine.
  One engine per process serves the whole run; at each checkpoint the provider brings the engine
  up to date with the trained weights (full finetuning: loaded in place; LoRA: the adapter saved
  and served through a ``LoRARequest``) before handing out the sampler.
- `FactoryProvider`: wraps a plain ``factory(model, tokenizer) -> Sampler`` (the older API).

`sampler(model)` is the one call the round engine makes, at every checkpoint and again for every
earlier state deferred tracking loads back, so it must always reflect the weights *now*.
Under ``accelerate launch`` with several processes, the `CheckpointMeasurer` (curator.measurement)
wraps what it returns in a `ShardedSampler` (curator.sampling.sharded), so each rank samples its
share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from curator.sampling import samplers
from curator.sampling.base import Sampler


@runtime_checkable
class SamplerProvider(Protocol):
    """Hands out a sampler over a model's current weights; owns whatever backs it (an engine)."""

    def sampler(self, model: Any) -> Sampler:
        """A sampler that reads ``model``'s weights as they are now."""
        ...

    def close(self) -> None:
        """Free what the provider holds (an engine, temporary files)."""
        ...


class HFProvider:
    """`HFSampler` over the live model: built once per model object, reused at every checkpoint."""

    def __init__(self, tokenizer: Any, *, batch_size: int = 32, max_batch_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self._model: Any = None
        self._sampler: Any = None

    def sampler(self, model: Any) -> Sampler:
        if self._model is not model:
            from curator.sampling.hf import HFSampler  # lazy: pulls in tqdm

            self._sampler = HFSampler(
                model, self.tokenizer, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens
            )
            self._model = model
        return self._sampler

    def close(self) -> None:
        self._model = self._sampler = None


class FactoryProvider:
    """A provider from a ``factory(model, tokenizer) -> Sampler``, called at every checkpoint."""

    def __init__(self, factory: Callable[[Any, Any], Sampler], tokenizer: Any):
        self.factory = factory
        self.tokenizer = tokenizer

    def sampler(self, model: Any) -> Sampler:
        return self.factory(model, self.tokenizer)

    def close(self) -> None:
        return None


def make_provider(
    backend: str,
    base: Any,
    *,
    batch_size: int = 32,
    vllm: Any = None,
    lora: bool = False,
    factory: Callable[[Any, Any], Sampler] | None = None,
    tokenizer: Any = None,
) -> SamplerProvider:
    """The provider for a recipe's ``dynamics.backend``: the one way every caller builds samplers.

    Args:
        backend: "hf", "vllm" or a registered third-party backend.
        base: the base `LoadedModel` (vLLM's engine is built from these weights, once); may be
            None for "hf" or with ``factory`` when ``tokenizer`` is given.
        batch_size: prompts per batch of the hf sampler.
        vllm: `VLLMSettings` (engine memory share, tensor parallelism ...), for "vllm".
        lora: whether the trained models are LoRA-wrapped (vLLM then serves adapters).
        factory: ``factory(model, tokenizer) -> Sampler`` overriding ``backend`` (called at every
            checkpoint).
        tokenizer: default ``base.tokenizer``.
    """
    tokenizer = tokenizer if tokenizer is not None else base.tokenizer
    if factory is not None:
        return FactoryProvider(factory, tokenizer)
    if backend == "hf":
        return HFProvider(tokenizer, batch_size=batch_size)
    if backend == "vllm":
        from curator.sampling.vllm import VLLMProvider, VLLMSettings  # lazy: pulls in tqdm

        return VLLMProvider(base, vllm or VLLMSettings(), lora=lora)

    cls = samplers.get(backend)  # a third-party backend: built per checkpoint from the live model

    def from_live(model: Any, tokenizer: Any) -> Sampler:
        import dataclasses

        return cls.from_loaded(dataclasses.replace(base, model=model), batch_size=batch_size)

    return FactoryProvider(from_live, tokenizer)
