"""The `vllm` sampler (optional extra ``curator[vllm]``, needs a GPU): same protocol as `HFSampler`.

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
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np

from curator.data.format import encode_prompt, encode_scoring_pairs
from curator.errors import ConfigError, CuratorError, require
from curator.sampling.base import SamplingParams


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

    def __init__(self, model: str, *, tokenizer: str | None = None, lora_path: str | None = None,
                 enable_lora: bool | None = None, max_lora_rank: int = 64, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.85, seed: int = 0, trust_remote_code: bool = False,
                 progress: bool = False, **llm_kwargs: Any):
        require("vllm", "vllm", "The vLLM sampler")
        from vllm import LLM

        self.progress = progress
        lora = bool(lora_path) if enable_lora is None else enable_lora
        self.llm = LLM(model=str(model), tokenizer=str(tokenizer or model), dtype=dtype, seed=seed,
                       enable_prefix_caching=True, enable_lora=lora, max_lora_rank=max_lora_rank,
                       gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
                       **llm_kwargs)
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
            raise ConfigError("this VLLMSampler was built without LoRA support; pass lora_path=... or "
                              "enable_lora=True when constructing it")
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise CuratorError(f"{path!r} is not a peft adapter directory (no adapter_config.json)")
        from vllm.lora.request import LoRARequest

        # vLLM caches adapters by integer id: a new checkpoint directory must get a new id
        aid = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
        self._lora = LoRARequest(f"adapter-{aid}", aid, path)

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
        sp = VLLMParams(n=1 if greedy else n, temperature=params.temperature,
                        top_p=1.0 if greedy else params.top_p, max_tokens=params.max_new_tokens,
                        stop=[s for s in params.stop if s] or None, seed=params.seed, skip_special_tokens=True)
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
            lp = np.empty(len(t), dtype=np.float32)
            for k, tok in enumerate(t):
                entry = plp[len(p) + k]
                if entry is None or tok not in entry:
                    raise CuratorError("vLLM returned no log-prob for a target token; upgrade vllm "
                                       "(prompt_logprobs must include the prompt's own tokens)")
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
    def from_loaded(cls, loaded: Any, **kw: Any) -> "VLLMSampler":
        """From a model directory / hub id, or a `LoadedModel` / alias / .gguf spec.

        vLLM loads weights itself, so an in-memory model (an alias, a GGUF file, a tiny model) is
        first written to a temporary ``save_pretrained`` directory.
        """
        require("vllm", "vllm", "The vLLM sampler")
        from curator.models.loading import ALIASES, LoadedModel, load_model, save_model

        if isinstance(loaded, LoadedModel):
            spec, obj = loaded.spec, loaded
        else:
            spec, obj = os.fspath(loaded), None
        plain = os.path.isfile(os.path.join(spec, "config.json")) or (
            spec not in ALIASES and not spec.lower().endswith(".gguf") and not os.path.exists(spec))
        if plain and (obj is None or not hasattr(obj.model, "peft_config")):
            return cls(spec, **kw)
        obj = obj or load_model(spec)
        model = obj.model
        if hasattr(model, "peft_config"):
            import copy

            # merge into a copy: merge_and_unload rewrites the caller's base weights in place
            model = copy.deepcopy(model).merge_and_unload()
        out = tempfile.mkdtemp(prefix="curator-vllm-")
        save_model(LoadedModel(model, obj.tokenizer, spec, obj.device, obj.dtype), out)
        return cls(out, **kw)
