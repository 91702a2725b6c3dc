"""`CheckpointMeasurer`: the one owner of measuring a checkpoint.

The round engine (`train_and_track`), `curate measure` (`measure_checkpoints`), `PreMemCallback`
and `curate premem` all measure through it, so they agree on everything a measurement decides:

- which sampler: the `SamplerProvider`'s, over the model's weights as they are now;
- how the work is laid out across the ranks of a launch: each rank samples and scores its share
  of the prompts (every copy of a prompt on one rank, so per-sample seeds are unchanged) and every
  rank receives all answers (`curator.sampling.sharded`), so any number of processes gives the
  one-process ledger; where the parameters are sharded (FSDP) every rank runs every forward pass;
- the model's state while measured: eval mode and its own forward, not accelerate's autocast
  wrapper (the ledger scores the weights, as `curate measure` does from the saved checkpoint);
- who writes: the main process only (`write_ledger`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator import distributed
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.dynamics.ledger import Ledger
from curator.dynamics.settings import MeasureSettings, TestEval
from curator.dynamics.tracker import DynamicsTracker
from curator.evaluation import evaluate_accuracy
from curator.sampling.base import Sampler, SamplingParams
from curator.sampling.sharded import measuring, sharded


class RecordingSampler:
    """Passes calls through to a Sampler and keeps every completion by prompt (e.g. for ATC)."""

    def __init__(self, inner: Sampler):
        self.inner = inner
        self.accepts_counts = bool(getattr(inner, "accepts_counts", False))
        self.model = getattr(inner, "model", None)
        self.completions: dict[str, list[str]] = {}

    def generate(self, prompts, n, params):
        outs = self.inner.generate(prompts, n, params)
        for p, o in zip(prompts, outs):
            self.completions.setdefault(p, []).extend(o)
        return outs

    def target_logprobs(self, prompts, targets):
        return self.inner.target_logprobs(prompts, targets)


@dataclass
class Measured:
    """One checkpoint's measurement: its ledger rows and what ``after`` returned."""

    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


AfterCheckpoint = Callable[[Sampler, Any, list[dict]], "dict | None"]


class CheckpointMeasurer:
    """Measures a training set at checkpoint after checkpoint and keeps the ledger.

    Args:
        examples, fmt, grader: the training examples, their (prompt, target) format, the grader.
        settings: the tracker's settings (`MeasureSettings`: k, sampling, p, tracking mode).
        provider: the `SamplerProvider` that hands out a sampler over a model's current weights.
        n_checkpoints: the final checkpoint's index (lazy tracking makes that one exact); None
            only without lazy tracking.
        tokenizer: for chat-template prompts.
        record_completions: hand ``after`` a `RecordingSampler` that kept what was sampled.
        progress: sampling progress bars.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        fmt: PromptFormat,
        grader: Any,
        settings: MeasureSettings,
        provider: Any,
        n_checkpoints: int | None,
        *,
        tokenizer: Any = None,
        record_completions: bool = False,
        progress: bool = False,
    ):
        self.fmt, self.grader, self.tokenizer = fmt, grader, tokenizer
        self.settings, self.provider = settings, provider
        self.record_completions = record_completions
        self.tracker = DynamicsTracker(
            examples,
            fmt,
            grader,
            k=settings.k,
            params=settings.params or SamplingParams(stop=fmt.stop),
            p=settings.p,
            lazy=settings.lazy,
            defer=settings.defer,
            n_checkpoints=n_checkpoints,
            exact_every_checkpoint=settings.exact_every_checkpoint,
            tokenizer=tokenizer,
            progress=progress,
        )
        self.last_info: Any = None  # the launch's layout (FSDP or not) as the last checkpoint told it

    @property
    def samples_drawn(self) -> int:
        return self.tracker.samples_drawn

    def sampler(self, model: Any, info: Any = None) -> Sampler:
        """The sampler a measurement of ``model`` uses on this rank: the provider's, split across
        the launch's ranks (`curator.sampling.sharded.sharded`)."""
        s = sharded(self.provider.sampler(model), info if info is not None else self.last_info)
        return RecordingSampler(s) if self.record_completions else s

    def measure(self, model: Any, info: Any, after: AfterCheckpoint | None = None) -> Measured:
        """Measure ``model`` (the live torch model) as checkpoint ``info``; every rank calls this.

        ``info`` needs ``index`` (1-based), ``step``, ``epoch`` and optionally ``metrics`` and
        ``params_sharded`` (a `curator.training.CheckpointInfo`). ``after(sampler, info, rows)``
        runs right after, with the same sampler and the model still in its measuring state.
        """
        self.last_info = info
        with measuring(model):
            sampler = self.sampler(model, info)
            rows = self.tracker.measure(
                sampler, info, model=model, sampler_factory=lambda state: self.sampler(state, info)
            )
            extra = (after(sampler, info, rows) or {}) if after is not None else {}
        if hasattr(self.provider, "sleep"):  # give the GPU back to training until the next checkpoint
            self.provider.sleep()
        return Measured(rows, dict(extra))

    def test_accuracy(self, model: Any, test: TestEval) -> float:
        """Accuracy on the test set, sampled the way checkpoints are (split across ranks)."""

        if not test.examples:
            return float("nan")
        params = test.params or SamplingParams(temperature=0.0, top_p=1.0, stop=self.fmt.stop)
        with measuring(model):
            sampler = sharded(self.provider.sampler(model), self.last_info)
            result = evaluate_accuracy(
                sampler, test.examples, self.fmt, self.grader, params, n=test.samples, tokenizer=self.tokenizer
            )
        return result.accuracy

    def ledger(self, **meta: Any) -> Ledger:
        """The ledger of every checkpoint measured so far (identical on every rank)."""
        return self.tracker.ledger(**meta)

    def write_ledger(self, path: str | os.PathLike, ledger: Ledger | None = None) -> bool:
        """Write ``ledger`` (default: `ledger()`) to ``path`` on the main process only; returns
        whether this process wrote."""

        if not distributed.is_main_process():
            return False
        (ledger if ledger is not None else self.ledger()).to_parquet(Path(path))
        return True
