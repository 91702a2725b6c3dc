"""The `vllm` sampler (optional extra ``premem-curator[vllm]``, needs a GPU): same protocol as `HFSampler`,
and `VLLMProvider`, which keeps one engine following the weights of a model being trained.

- prompts go to vLLM as token ids made by `encode_prompt` / `encode_pair`, so they are exactly the
  tokens the model was trained and scored on;
- prefix caching is on, so the n samples of a prompt (and prompts sharing a chat template prefix)
  reuse its KV cache;
- a finetuned LoRA checkpoint is served without merging it: `set_adapter(path)` makes later calls
  use that adapter through a ``LoRARequest`` (each new path gets a new adapter id, as vLLM caches
  adapters by id);
- `target_logprobs` uses ``prompt_logprobs``: the prompt+target ids are scored in one prefill.

Determinism: ``SamplingParams.seed`` seeds each request, so the same call gives the same samples.
Unlike `HFSampler`, sample j is not guaranteed to be the same for different n.

Following training (`VLLMProvider`), the way TRL's colocated vLLM does it: one engine per process
for the whole run, built once from the base weights. At each checkpoint,
- full finetuning: every parameter is loaded into the running engine in place
  (``model_runner.model.load_weights``), then the prefix cache is reset — cached KV blocks were
  computed by the old weights;
- LoRA: the adapter is saved and served through a ``LoRARequest`` (reloaded in place where vLLM
  supports ``load_inplace``, else under a new adapter id); the base weights never change, nothing
  is merged and no engine is started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curator import distributed
from curator.data.format import encode_prompt, encode_scoring_pairs
from curator.errors import ConfigError, CuratorError, require
from curator.models.loading import ALIASES, LoadedModel, load_model, materialize, save_model
from curator.sampling.base import SamplingParams
from curator.training.settings import launch_world_size


class VLLMSampler:
    """Sampler protocol over a vLLM engine.

    Args:
        model: a local model directory (``save_pretrained`` layout) or a hub id.
        tokenizer: tokenizer directory or id (default: ``model``).
        lora_path: a peft adapter directory to serve from the start (see `set_adapter`).
        max_lora_rank: largest adapter rank vLLM reserves room for.
        dtype: vLLM dtype ("auto", "bfloat16", "float16", "float32").
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        progress: vLLM's progress bar.
        **llm_kwargs: passed to ``vllm.LLM`` (``tensor_parallel_size``, ``max_model_len`` ...).
    """

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        lora_path: str | None = None,
        enable_lora: bool | None = None,
        max_lora_rank: int = 64,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        trust_remote_code: bool = False,
        progress: bool = False,
        engine: Any = None,
        **llm_kwargs: Any,
    ):
        require("vllm", "vllm", "The vLLM sampler")
        from vllm import LLM

        self.progress = progress
        lora = bool(lora_path) if enable_lora is None else enable_lora
        if engine is None:
            engine = LLM(
                model=str(model),
                tokenizer=str(tokenizer or model),
                dtype=dtype,
                seed=seed,
                enable_prefix_caching=True,
                enable_lora=lora,
                max_lora_rank=max_lora_rank,
                gpu_memory_utilization=gpu_memory_utilization,
                trust_remote_code=trust_remote_code,
                **llm_kwargs,
            )
        self.llm = engine
        self.tensor_parallel_size = int(llm_kwargs.get("tensor_parallel_size", 1) or 1)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_enabled = lora
        self._lora = None
        self._lora_ids: dict[str, int] = {}
        if lora_path:
            self.set_adapter(lora_path)

    def set_adapter(self, path: str | os.PathLike | None) -> None:
        """Serve the peft adapter saved at ``path`` from now on (``None``: the base model)."""
        if path is None:
            self._lora = None
            return
        if not self.lora_enabled:
            raise ConfigError(
                "this VLLMSampler was built without LoRA support; pass lora_path=... or "
                "enable_lora=True when constructing it"
            )
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise CuratorError(f"{path!r} is not a peft adapter directory (no adapter_config.json)")
        import inspect

        from vllm.lora.request import LoRARequest

        if "load_inplace" in inspect.signature(LoRARequest).parameters:
            # newer vLLM reloads the adapter under the same id from the directory, in place
            aid = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
            self._lora = LoRARequest(f"adapter-{aid}", aid, path, load_inplace=True)
        else:
            # older vLLM caches adapters by id: every new save gets a new id
            aid = len(self._lora_ids) + 1
            self._lora_ids[f"{path}#{aid}"] = aid
            self._lora = LoRARequest(f"adapter-{aid}", aid, path)

    def load_weights(self, named_tensors: Any) -> None:
        """Load ``(name, tensor)`` pairs (transformers names) into the running engine, in place.

        The prefix cache is reset afterwards: KV blocks cached under the old weights are stale.
        """
        engine_model(self.llm).load_weights(named_tensors)
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[str], n: int, params: SamplingParams) -> list[list[str]]:
        """``n`` completions per prompt, stop strings cut off, in prompt order."""
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"samples per prompt (n) must be an integer >= 1, got {n!r}")
        if not prompts:
            return []
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        greedy = params.temperature == 0
        # greedy samples are identical: decode one and repeat it (vLLM rejects n > 1 when greedy)
        sp = VLLMParams(
            n=1 if greedy else n,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            stop=[s for s in params.stop if s] or None,
            seed=params.seed,
            skip_special_tokens=True,
        )
        reqs = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, p)) for p in prompts]
        outs = self.llm.generate(reqs, sp, lora_request=self._lora, use_tqdm=self.progress)
        texts = [[c.text for c in o.outputs] for o in outs]
        return [t * n for t in texts] if greedy else texts

    def target_logprobs(self, prompts: Sequence[str], targets: Sequence[str]) -> list[np.ndarray]:
        """Every target token's log-probability, from vLLM's ``prompt_logprobs`` of prompt+target."""
        pairs = encode_scoring_pairs(self.tokenizer, prompts, targets)
        if not pairs:
            return []
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        # vLLM always puts each actual prompt token in its position's dict, beside the top-k;
        # k=1 (not 0) because some versions reject prompt_logprobs=0
        sp = VLLMParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        reqs = [TokensPrompt(prompt_token_ids=p + t) for p, t in pairs]
        outs = self.llm.generate(reqs, sp, lora_request=self._lora, use_tqdm=self.progress)
        result = []
        for (p, t), o in zip(pairs, outs):
            plp = o.prompt_logprobs  # one entry per prompt token; the first is None (no context)
            lp: np.ndarray = np.empty(len(t), dtype=np.float32)
            for k, tok in enumerate(t):
                entry = plp[len(p) + k]
                if entry is None or tok not in entry:
                    raise CuratorError(
                        "vLLM returned no log-prob for a target token; upgrade vllm "
                        "(prompt_logprobs must include the prompt's own tokens)"
                    )
                lp[k] = entry[tok].logprob
            result.append(lp)
        return result

    def target_nll(self, prompts: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean NLL per target token, target token count) per pair; NaN for an empty target."""
        lps = self.target_logprobs(prompts, targets)
        n_tok = np.array([len(lp) for lp in lps], dtype=np.int64)
        nll = np.array([-float(np.mean(lp, dtype=np.float64)) if len(lp) else np.nan for lp in lps])
        return nll, n_tok

    @classmethod
    def from_loaded(cls, loaded: Any, **kw: Any) -> VLLMSampler:
        """From a model directory / hub id, or a `LoadedModel` / alias / .gguf spec.

        vLLM loads weights itself, so an in-memory model (an alias, a GGUF file, a tiny model) is
        first written to a temporary ``save_pretrained`` directory.
        """
        require("vllm", "vllm", "The vLLM sampler")
        if isinstance(loaded, LoadedModel):
            spec, obj = loaded.spec, loaded
        else:
            spec, obj = os.fspath(loaded), None
        plain = os.path.isfile(os.path.join(spec, "config.json")) or (
            spec not in ALIASES and not spec.lower().endswith(".gguf") and not os.path.exists(spec)
        )
        if plain and (obj is None or not hasattr(obj.model, "peft_config")):
            return cls(spec, **kw)
        obj = obj or load_model(spec)
        out = tempfile.mkdtemp(prefix="curator-vllm-")
        if hasattr(obj.model, "peft_config"):
            # served as base + adapter through a LoRARequest, never merged
            save_base_weights(obj.model, obj.tokenizer, out)
            adapter = os.path.join(out, "adapter")
            obj.model.save_pretrained(adapter)
            kw.setdefault("max_lora_rank", lora_rank_slot(obj.model))
            return cls(out, lora_path=adapter, **kw)
        save_model(LoadedModel(obj.model, obj.tokenizer, spec, obj.device, obj.dtype), out)
        return cls(out, **kw)


def engine_model(llm: Any) -> Any:
    """The torch model inside a colocated (in-process) vLLM engine, whose ``load_weights`` takes
    ``(name, tensor)`` pairs with transformers names. Engine layouts differ across vLLM versions."""
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    for path in (("model_runner", "model"), ("worker", "model_runner", "model")):
        obj = worker
        for attr in path:
            obj = getattr(obj, attr, None)
        if obj is not None and hasattr(obj, "load_weights"):
            return obj
    raise CuratorError(
        "this vLLM version does not expose its model in-process "
        "(llm.llm_engine.model_executor.driver_worker.model_runner.model), so full-finetuning "
        "weights cannot be loaded into it; set VLLM_ENABLE_V1_MULTIPROCESSING=0, train LoRA "
        "(model.lora), or use dynamics.backend: hf"
    )


def lora_rank_slot(model: Any) -> int:
    """The smallest LoRA rank vLLM accepts that fits the model's adapters."""
    rank = max(int(c.r) for c in model.peft_config.values())
    return next((s for s in (8, 16, 32, 64, 128, 256, 320, 512) if s >= rank), rank)


def base_weight_items(model: Any):
    """``(name, tensor)`` of a model's base weights with transformers names: for a peft model, the
    weights under the adapters (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, tensor in inner.state_dict().items():
        if "lora_" in name:
            continue
        yield name.replace(".base_layer.", "."), tensor


def save_base_weights(model: Any, tokenizer: Any, out: str | os.PathLike) -> None:
    """Write the base model under any adapters as a ``save_pretrained`` directory vLLM can load."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    materialize(inner).save_pretrained(out, state_dict=dict(base_weight_items(model)))
    tokenizer.save_pretrained(out)


@dataclass(frozen=True)
class VLLMSettings:
    """How the vLLM engine is run (recipe section ``dynamics.vllm``)."""

    gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "fraction of each GPU the engine may take (weights + KV cache); the rest is left to "
            "training, which shares the GPU (higher: faster sampling, less room to train)"
        },
    )
    tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "GPUs one engine is split over; ranks of a launch form groups of this size that share "
            "an engine (must divide the number of processes)"
        },
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "longest prompt + completion the engine plans KV cache for; null: the model's"}
    )
    dtype: str = field(default="auto", metadata={"help": "engine dtype: auto, bfloat16, float16, float32"})
    enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "release the engine's GPU memory while training runs and wake it for each "
            "checkpoint (more room to train; a reload per checkpoint)"
        },
    )

    def __post_init__(self):
        problems = []
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append(
                f"dynamics.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        if not isinstance(self.tensor_parallel_size, int) or self.tensor_parallel_size < 1:
            problems.append(
                f"dynamics.vllm.tensor_parallel_size must be an integer >= 1, got {self.tensor_parallel_size!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            problems.append(f"dynamics.vllm.max_model_len must be >= 2 or null, got {self.max_model_len!r}")
        if problems:
            raise ConfigError(problems)


def check_vllm_launch(settings: VLLMSettings, num_processes: int, n_gpus: int) -> list[str]:
    """Problems with running vLLM under this launch (empty when fine); no import of vllm."""
    problems = []
    tp = settings.tensor_parallel_size
    if tp > max(n_gpus, 0):
        problems.append(
            f"dynamics.vllm.tensor_parallel_size={tp} needs {tp} GPUs but this machine has "
            f"{n_gpus}; lower it to {max(n_gpus, 1)} or run where there are more GPUs"
        )
    if num_processes % tp:
        problems.append(
            f"dynamics.vllm.tensor_parallel_size={tp} must divide the number of processes "
            f"({num_processes}): each group of {tp} ranks shares one engine"
        )
    return problems


def check_vllm_ready(settings: VLLMSettings, num_processes: int | None = None) -> None:
    """Fail before training when vLLM cannot run here: not installed, too few GPUs, bad grouping."""
    require("vllm", "vllm", "dynamics.backend: vllm")
    import torch

    problems = check_vllm_launch(
        settings, num_processes or launch_world_size(), torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    if problems:
        raise ConfigError(problems)


class VLLMProvider:
    """One vLLM engine per process that follows the weights of the model being trained.

    The engine is built once, on first use, from ``base``'s weights. ``sampler(model)`` brings it
    up to date with ``model`` and returns the sampler over it: a LoRA model's adapter is saved to
    this provider's directory and served through a ``LoRARequest``; a fully finetuned model's
    weights are loaded into the engine in place. Close it to free the engine and its files.
    """

    def __init__(
        self,
        base: Any,
        settings: VLLMSettings | None = None,
        *,
        lora: bool = False,
        max_lora_rank: int = 64,
        seed: int = 0,
        trust_remote_code: bool = False,
    ):
        self.base = base
        self.settings = settings or VLLMSettings()
        self.lora = lora
        self.max_lora_rank = max_lora_rank
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self._dir: str | None = None
        self._sampler: VLLMSampler | None = None
        self.engines_built = 0
        self.weight_syncs = 0

    def _engine(self, model: Any) -> VLLMSampler:
        if self._sampler is None:
            s = self.settings
            self._dir = tempfile.mkdtemp(prefix="curator-vllm-")
            base_dir = os.path.join(self._dir, "base")
            save_base_weights(self.base.model, self.base.tokenizer, base_dir)
            kw: dict[str, Any] = {"tensor_parallel_size": s.tensor_parallel_size}
            if s.max_model_len is not None:
                kw["max_model_len"] = s.max_model_len
            if s.enable_sleep_mode:
                kw["enable_sleep_mode"] = True
            if distributed.world_size() > 1:
                # every rank runs its own engine (or its share of a tensor-parallel one) inside the
                # launch's processes; ranks of one tensor-parallel group must sample alike
                kw["distributed_executor_backend"] = "external_launcher"
            rank = max(self.max_lora_rank, lora_rank_slot(model)) if self.lora else self.max_lora_rank
            self._sampler = VLLMSampler(
                base_dir,
                enable_lora=self.lora,
                max_lora_rank=rank,
                dtype=s.dtype,
                gpu_memory_utilization=s.gpu_memory_utilization,
                seed=self.seed + distributed.rank() // s.tensor_parallel_size,
                trust_remote_code=self.trust_remote_code,
                **kw,
            )
            self.engines_built += 1
        return self._sampler

    def sampler(self, model: Any) -> VLLMSampler:
        sampler = self._engine(model)
        if self.settings.enable_sleep_mode and hasattr(sampler.llm, "wake_up"):
            sampler.llm.wake_up()
        if self.lora:
            if not hasattr(model, "peft_config"):
                raise ConfigError("the vLLM provider was set up for LoRA but the model has no adapters")
            assert self._dir is not None  # made by _engine above
            adapter = os.path.join(self._dir, "adapter")
            model.save_pretrained(adapter)
            sampler.set_adapter(adapter)
        else:
            sampler.load_weights(base_weight_items(model))
        self.weight_syncs += 1
        return sampler

    def sleep(self) -> None:
        """Release the engine's GPU memory until the next `sampler` call (``enable_sleep_mode``)."""
        if self._sampler is not None and self.settings.enable_sleep_mode and hasattr(self._sampler.llm, "sleep"):
            self._sampler.llm.sleep(level=1 if self.lora else 2)

    def close(self) -> None:
        self._sampler = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
