"""The settings of measuring learning dynamics and test accuracy, beside the code that uses them.

`DynamicsSettings` and `EvalSettings` are the recipe's ``dynamics:`` and ``evaluation:`` sections
(curator.recipes imports them; the YAML keys are these fields). `MeasureSettings` is what one
`DynamicsTracker` needs, whole: a caller turns a recipe section into it with
`DynamicsSettings.measure_settings`, and the round engine, `curate measure`, `curate premem`,
`PreMemCallback` and the sweep pass that one object instead of five loose arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from curator.errors import ConfigError
from curator.sampling.base import SamplingParams
from curator.sampling.vllm import VLLMSettings


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class DynamicsSettings:
    samples: int = _help("k: completions sampled per example per checkpoint (paper: 5)", default=5)
    temperature: float = _help("sampling temperature (paper: 0.8)", default=0.8)
    top_p: float = _help("nucleus sampling (paper: 0.95)", default=0.95)
    max_new_tokens: int = _help("longest sampled completion; longer solutions are cut and graded wrong", default=256)
    p: float = _help("memorization threshold on target perplexity (GSM8K ~1.105, MATH ~1.2)", default=1.105)
    lazy: bool = _help("skip sampling that cannot change PreMemAcc (identical result, fewer tokens)", default=True)
    defer: bool = _help(
        "with lazy: sample earlier checkpoints at the end, only for examples memorized "
        "there (identical final PreMemAcc, fewer tokens still; keeps a CPU copy of the "
        "trainable weights per checkpoint)",
        default=False,
    )
    backend: Literal["hf", "vllm"] = _help("sampler backend; vllm needs the 'vllm' extra and a GPU", default="hf")
    batch_size: int = _help("prompts per sampling batch (hf backend)", default=32)
    vllm: VLLMSettings = _help(
        "the vLLM engine (backend: vllm): GPU memory share, tensor parallelism", default_factory=VLLMSettings
    )

    def __post_init__(self):
        problems = []
        if self.samples < 1:
            problems.append(f"dynamics.samples must be >= 1, got {self.samples}")
        # written as what must hold, so that NaN (every comparison False) fails too
        if not 1 < self.p < math.inf:
            problems.append(f"dynamics.p must be > 1 and finite (perplexity is >= 1 always), got {self.p}")
        if not 0 <= self.temperature < math.inf:
            problems.append(f"dynamics.temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"dynamics.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            problems.append("dynamics.max_new_tokens and dynamics.batch_size must be >= 1")
        if self.defer and not self.lazy:
            problems.append("dynamics.defer is a kind of lazy tracking; set dynamics.lazy: true or defer: false")
        if problems:
            raise ConfigError(problems)

    def sampling(self, stop: tuple[str, ...] | list[str], seed: int) -> SamplingParams:
        """The measurement's sampling parameters (the format's ``stop``, a seed per round)."""
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(stop),
            seed=seed,
        )

    def measure_settings(
        self, stop: tuple[str, ...] | list[str], seed: int, *, exact_every_checkpoint: bool = False
    ) -> MeasureSettings:
        """What the tracker needs from this section, with the sampling seed of this round."""
        return MeasureSettings(
            k=self.samples,
            params=self.sampling(stop, seed),
            p=self.p,
            lazy=self.lazy,
            defer=self.defer,
            exact_every_checkpoint=exact_every_checkpoint,
        )


@dataclass(frozen=True)
class EvalSettings:
    samples: int = _help("completions per test question (1 with temperature 0 = greedy accuracy)", default=1)
    temperature: float = _help("0 = greedy decoding", default=0.0)
    max_new_tokens: int = _help("longest test completion", default=256)

    def __post_init__(self):
        problems = []
        if self.samples < 1:
            problems.append(f"evaluation.samples must be >= 1, got {self.samples}")
        if not 0 <= self.temperature < math.inf:
            problems.append(f"evaluation.temperature must be a finite number >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            problems.append(f"evaluation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if problems:
            raise ConfigError(problems)

    def sampling(self, stop: tuple[str, ...] | list[str], seed: int, top_p: float = 0.95) -> SamplingParams:
        """Test-time sampling parameters (`eval_sampling` with this section's values)."""
        return eval_sampling(self.temperature, self.max_new_tokens, stop, seed, top_p=top_p)


def eval_sampling(
    temperature: float, max_new_tokens: int, stop: tuple[str, ...] | list[str], seed: int, top_p: float = 0.95
) -> SamplingParams:
    """Test-time sampling parameters: greedy (top_p 1) at temperature 0, else nucleus ``top_p``."""
    return SamplingParams(
        temperature=temperature,
        top_p=1.0 if temperature == 0 else top_p,
        max_new_tokens=max_new_tokens,
        stop=tuple(stop),
        seed=seed,
    )


@dataclass(frozen=True)
class MeasureSettings:
    """How `DynamicsTracker` measures every checkpoint (see curator.dynamics.tracker).

    Attributes:
        k: samples per example for a complete cell.
        params: sampling parameters; None: the paper's defaults with the format's stop string.
        p: memorization threshold on target perplexity.
        lazy / defer / exact_every_checkpoint: the tracking mode.
    """

    k: int = 5
    params: SamplingParams | None = None
    p: float = 1.105
    lazy: bool = True
    defer: bool = False
    exact_every_checkpoint: bool = False


@dataclass(frozen=True)
class TestEval:
    """Test accuracy after training: the test examples, how they are sampled, samples per question."""

    __test__ = False  # not a pytest test class, whatever its name

    examples: tuple[Any, ...] | list[Any] = ()
    params: SamplingParams | None = None  # None: greedy with the format's stop string
    samples: int = 1
