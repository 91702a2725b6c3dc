"""Measuring learning dynamics at each checkpoint: target perplexities and sampled accuracy.

`DynamicsTracker.measure(sampler, info)` scores every example's target (always) and samples
answers only where they can still change PreMemAcc (lazy tracking, the default):

Let R be an example's running max of MaskedAcc over earlier checkpoints, in correct-sample
counts out of k (every complete cell has exactly k samples, so R is an integer 0..k), c the
correct answers among the s drawn so far at this checkpoint.

* Intermediate checkpoint (only R matters for later):
  - memorized here (perplexity <= p): MaskedAcc is 0 whatever Acc is -> draw nothing ("memorized").
  - otherwise stop as soon as even all-correct remaining samples cannot raise R, i.e.
    c + (k - s) <= R ("max-reached" when that holds before any sample, i.e. R = k;
    "cannot-raise" after some). Else draw all k and R = max(R, c).
* Final checkpoint (PreMemAcc = min(max(R, MaskedAcc), Acc) must be exact):
  - not memorized: MaskedAcc = Acc, so PreMemAcc = Acc -> draw all k.
  - memorized: PreMemAcc = min(R, Acc) -> draw until c >= R (then it is R; "determined"),
    or all k (then it is c / k). R = 0 needs no sample at all.

Each batch of draws is the smallest number after which a stop could first trigger (each wrong
sample lowers the upper bound c + k - s by one; each correct one raises c by one), so lazy
tracking draws exactly what one-sample-at-a-time would, in few batched `generate` calls.
R is always known exactly, because a skipped cell's MaskedAcc cannot exceed R.

Deferred tracking (``defer=True``, on top of lazy) goes further. The final PreMemAcc of an
example that is *not* memorized at the final checkpoint is its final Acc, whatever happened
before; only examples memorized at the end need their running max R. So intermediate checkpoints
record perplexities and keep a CPU copy of the trainable weights, and sample nothing
("deferred"). At the final checkpoint, for the examples memorized there, the earlier weights are
loaded back into the model one checkpoint at a time, latest first, and sampled with the
intermediate rules above; a max does not depend on the order it is taken in, and accuracy
usually rises during training, so latest-first finds a high R early and cuts the earlier
checkpoints short ("cannot-raise" then means: cannot raise the max over the checkpoints sampled
so far). Then the final weights are restored and the final checkpoint is sampled as above. The
final PreMemAcc is again exactly the full-tracking value; intermediate cells of examples not
memorized at the end stay unsampled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.dynamics.ledger import Ledger
from curator.errors import ConfigError, DataError
from curator.sampling.base import Sampler, SamplingParams


def check_premem_settings(n_examples: int, k: int, p: float) -> list[str]:
    """Problems with PreMemAcc tracking settings (empty list when fine)."""
    problems = []
    if n_examples < 1:
        problems.append("the training set is empty; PreMemAcc tracking needs at least one example")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        problems.append(f"samples per example (k) must be an integer >= 1, got {k!r}")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not p > 1 or not math.isfinite(p):
        problems.append(
            f"memorization threshold p must be a number > 1 (perplexity is >= 1), got {p!r}; "
            "the paper uses 1.105 for GSM8K-like data and 1.2 for MATH"
        )
    return problems


class DynamicsTracker:
    """Per-checkpoint measurement of target perplexity and sampled accuracy for a training set.

    Args:
        examples: the training examples (ids must be unique).
        fmt: how examples become (prompt, target) text.
        grader: decides whether a sampled completion's final answer equals ``Example.answer``.
        k: samples per example for a complete cell.
        params: sampling parameters (paper: T=0.8, top_p=0.95).
        p: memorization threshold on target perplexity.
        lazy: skip samples that cannot change PreMemAcc (see module docstring). False samples all.
        n_checkpoints: index of the final checkpoint; lazy tracking needs it to know when the
            exact final value must be determined.
        exact_every_checkpoint: with lazy, treat every checkpoint like the final one, so that
            PreMemAcc is determined at every checkpoint (fewer savings; train accuracy of memorized
            examples is still cut short).
        defer: with lazy, postpone intermediate sampling to the final checkpoint and sample only
            examples memorized there (module docstring). `measure` then needs ``model=``; one copy
            of the trainable weights per intermediate checkpoint is kept in CPU memory (small for
            LoRA; the whole model for full finetuning).
        tokenizer: used only for chat-template prompts.
        progress: show a progress bar of samples drawn.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        fmt: PromptFormat,
        grader: Any,
        *,
        k: int = 5,
        params: SamplingParams | None = None,
        p: float = 1.105,
        lazy: bool = True,
        n_checkpoints: int | None = None,
        exact_every_checkpoint: bool = False,
        defer: bool = False,
        tokenizer: Any = None,
        progress: bool = False,
    ):
        problems = check_premem_settings(len(examples), k, p)
        if defer and not lazy:
            problems.append("defer=True is a kind of lazy tracking; it cannot be combined with lazy=False")
        if defer and exact_every_checkpoint:
            problems.append(
                "defer=True leaves intermediate checkpoints unsampled, which contradicts "
                "exact_every_checkpoint=True; choose one"
            )
        if lazy and not exact_every_checkpoint and n_checkpoints is None:
            problems.append(
                "lazy tracking needs n_checkpoints (the final checkpoint's index) to know "
                "where PreMemAcc must be exact; pass it, or lazy=False"
            )
        if n_checkpoints is not None and n_checkpoints < 1:
            problems.append(f"n_checkpoints must be >= 1, got {n_checkpoints}")
        if problems:
            raise ConfigError(problems)
        ids = [e.id for e in examples]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"training examples have duplicate ids {dup[:5]}; ledger rows need unique ids")
        self.examples = list(examples)
        self.fmt, self.grader = fmt, grader
        self.k, self.p, self.lazy = int(k), float(p), bool(lazy)
        self.params = params or SamplingParams(stop=fmt.stop)
        self.n_checkpoints = n_checkpoints
        self.exact_every_checkpoint = exact_every_checkpoint
        self.defer = bool(defer)
        self.progress = progress
        self.prompts, self.targets = fmt.pairs(self.examples, tokenizer)
        # running max of MaskedAcc, in correct counts out of k
        self.running_max: np.ndarray = np.zeros(len(self.examples), dtype=np.int64)
        self.rows: list[dict[str, Any]] = []
        self.samples_drawn = 0
        self.generate_calls = 0
        # deferred tracking: per intermediate checkpoint, its rows, memorized mask and weights
        self._rows_at: dict[int, list[dict[str, Any]]] = {}
        self._memorized_at: dict[int, np.ndarray] = {}
        self._snapshots: dict[int, dict[str, Any]] = {}
        self.replaying: int | None = None  # the checkpoint being re-sampled, while deferred sampling runs

    def is_final(self, index: int) -> bool:
        return self.exact_every_checkpoint or (self.n_checkpoints is not None and index >= self.n_checkpoints)

    def measure(
        self, sampler: Sampler, info: Any, *, model: Any = None, sampler_factory: Callable[[Any], Sampler] | None = None
    ) -> list[dict[str, Any]]:
        """Measure one checkpoint; returns (and keeps) its ledger rows.

        ``info`` needs ``index`` (1-based), ``step`` and ``epoch``; a ``metrics`` dict, if present,
        is copied into every row (checkpoint-level signals such as train_loss).

        Deferred tracking needs ``model``, the live torch model being trained: its trainable
        weights are copied at intermediate checkpoints and loaded back into it for sampling at the
        final one (and the final weights restored afterwards). ``sampler_factory(model)`` builds
        the sampler for such an earlier state; without it ``sampler`` is reused, which is right
        only for a sampler that reads the live model (`HFSampler` over ``model``). Rows returned
        at intermediate checkpoints are completed in place when the final checkpoint is measured.
        """
        index = int(info.index)
        if self.rows and index <= self.rows[-1]["checkpoint"]:
            raise ConfigError(
                f"checkpoint {index} measured after checkpoint {self.rows[-1]['checkpoint']}; "
                "checkpoints must be measured in increasing order"
            )
        if self.defer:
            self._check_deferred(sampler, model, sampler_factory, index)
        nll, ntok = self._target_nll(sampler)
        ppl = np.exp(nll)
        memorized = ppl <= self.p
        final = self.is_final(index)
        if self.defer and not final:
            # sample nothing now; keep what the final checkpoint needs to sample this state later
            correct: np.ndarray = np.zeros(len(self.examples), dtype=np.int64)
            drawn: np.ndarray = np.zeros(len(self.examples), dtype=np.int64)
            reasons: list[str | None] = ["memorized" if m else "deferred" for m in memorized]
            self._memorized_at[index] = memorized
            if not memorized.all():
                self._snapshots[index] = take_snapshot(model)
        else:
            if self.defer:
                self._sample_deferred(sampler, model, sampler_factory, memorized)
            correct, drawn, reasons = self._sample(sampler, memorized, index, final)
            complete = drawn == self.k
            # memorized cells never raise the running max (MaskedAcc = 0); skipped ones cannot
            raise_ = complete & ~memorized
            self.running_max[raise_] = np.maximum(self.running_max[raise_], correct[raise_])

        extra = {
            k: float(v)
            for k, v in (getattr(info, "metrics", None) or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        rows = []
        for i, ex in enumerate(self.examples):
            rows.append(
                {
                    "example_id": ex.id,
                    "checkpoint": index,
                    "step": int(info.step),
                    "epoch": float(info.epoch),
                    "n_samples": int(drawn[i]),
                    "n_correct": int(correct[i]),
                    "target_nll": float(nll[i]),
                    "target_tokens": int(ntok[i]),
                    "perplexity": float(ppl[i]),
                    "memorized": bool(memorized[i]),
                    "skip_reason": reasons[i],
                    **extra,
                }
            )
        self.rows.extend(rows)
        self._rows_at[index] = rows
        return rows

    def __call__(self, sampler: Sampler, info: Any, **kw: Any) -> list[dict[str, Any]]:
        return self.measure(sampler, info, **kw)

    def ledger(self, **meta: Any) -> Ledger:
        """The ledger of every checkpoint measured so far."""
        if not self.rows:
            raise DataError("no checkpoint was measured; the ledger is empty")
        base = {
            "p": self.p,
            "k": self.k,
            "lazy": self.lazy,
            "exact_every_checkpoint": self.exact_every_checkpoint,
            "defer": self.defer,
            "sampling": dataclasses.asdict(self.params),
            "format": dataclasses.asdict(self.fmt),
            "grader": getattr(self.grader, "name", type(self.grader).__name__),
            "samples_drawn": self.samples_drawn,
        }
        return Ledger.from_rows(self.rows, **{**base, **meta})

    # -- internals --------------------------------------------------------------------------------
    def _target_nll(self, sampler: Sampler) -> tuple[np.ndarray, np.ndarray]:
        lps = sampler.target_logprobs(self.prompts, self.targets)
        if len(lps) != len(self.examples):
            raise RuntimeError(f"sampler returned {len(lps)} log-prob arrays for {len(self.examples)} targets")
        nll = np.empty(len(lps))
        ntok: np.ndarray = np.empty(len(lps), dtype=np.int64)
        for i, lp in enumerate(lps):
            lp = np.asarray(lp, dtype=np.float64)
            if lp.size == 0:
                raise DataError(
                    f"example {self.examples[i].id}: its target tokenizes to zero tokens; check the target template"
                )
            nll[i] = -lp.mean()
            ntok[i] = lp.size
        bad = ~np.isfinite(nll)
        if bad.any():
            ids = [self.examples[i].id for i in np.flatnonzero(bad)[:5]]
            raise DataError(
                f"non-finite target log-probs for example(s) {ids}; the model's outputs overflowed (try float32)"
            )
        return nll, ntok

    def _next_draw(self, i: int, c: int, s: int, memorized: bool, final: bool) -> tuple[int, str | None]:
        """(samples to draw next, skip reason if stopping now)."""
        k, R = self.k, int(self.running_max[i])
        if s >= k:
            return 0, None
        if not self.lazy:
            return k - s, None
        if final:
            if not memorized:
                return k - s, None  # PreMemAcc = Acc exactly
            if c >= R:
                return 0, "determined"  # min(R, Acc) = R whatever the rest
            return min(R - c, k - s), None
        if memorized:
            return 0, "memorized"
        upper = c + k - s
        if upper <= R:
            return 0, ("max-reached" if s == 0 else "cannot-raise")
        return min(upper - R, k - s), None

    def _check_deferred(self, sampler: Sampler, model: Any, sampler_factory: Any, index: int) -> None:
        if model is None:
            raise ConfigError("deferred tracking needs the live model: call measure(sampler, info, model=model)")
        if sampler_factory is None and getattr(sampler, "model", None) is not model:
            raise ConfigError(
                "deferred tracking re-samples earlier checkpoints by loading their weights into "
                "the model, but this sampler does not read that model (e.g. vLLM keeps its own "
                "copy); pass sampler_factory=, which builds a sampler for the model's current state"
            )
        if self.rows and self.is_final(self.rows[-1]["checkpoint"]):
            raise ConfigError(
                f"checkpoint {index} measured after the final checkpoint {self.n_checkpoints}; "
                "deferred tracking needs the true checkpoint count (n_checkpoints)"
            )

    def _sample_deferred(self, sampler: Sampler, model: Any, sampler_factory: Any, memorized_final: np.ndarray):
        """Sample the earlier checkpoints, latest first, for the examples memorized at the final one."""
        if not memorized_final.any() or not self._snapshots:
            self._snapshots.clear()
            return
        final_state = take_snapshot(model)
        try:
            for j in sorted(self._snapshots, reverse=True):
                mem_j = self._memorized_at[j]
                todo = memorized_final & ~mem_j
                snap = self._snapshots.pop(j)
                if not todo.any():
                    continue
                load_snapshot(model, snap)
                del snap
                self.replaying = j
                s = sampler_factory(model) if sampler_factory is not None else sampler
                correct, drawn, reasons = self._sample(s, mem_j, j, False, active=todo)
                for i in np.flatnonzero(todo):
                    row = self._rows_at[j][i]
                    row.update(n_samples=int(drawn[i]), n_correct=int(correct[i]), skip_reason=reasons[i])
                    if drawn[i] == self.k:
                        self.running_max[i] = max(int(self.running_max[i]), int(correct[i]))
        finally:
            self.replaying = None
            self._snapshots.clear()
            load_snapshot(model, final_state)

    def _sample(
        self, sampler: Sampler, memorized: np.ndarray, index: int, final: bool, active: np.ndarray | None = None
    ):
        """Draw samples by the lazy rules; examples outside ``active`` are left "deferred"."""
        n = len(self.examples)
        correct: np.ndarray = np.zeros(n, dtype=np.int64)
        drawn: np.ndarray = np.zeros(n, dtype=np.int64)
        reasons: list[str | None] = [None] * n
        todo = np.ones(n, dtype=bool) if active is None else active
        for i in np.flatnonzero(~todo):
            reasons[i] = "memorized" if memorized[i] else "deferred"
        counts_ok = bool(getattr(sampler, "accepts_counts", False))
        bar = None
        if self.progress:
            from curator.console import progress as progress_bar  # lazy: pulls in tqdm

            what = f"checkpoint {index}" + (" (deferred)" if self.replaying is not None else "")
            bar = progress_bar(total=int(todo.sum()) * self.k, desc=f"sampling @ {what}", unit="sample", leave=False)
        batch = 0
        while True:
            want: dict[int, int] = {}
            for i in np.flatnonzero(todo):
                d, why = self._next_draw(int(i), int(correct[i]), int(drawn[i]), bool(memorized[i]), final)
                if d > 0:
                    want[int(i)] = d
                else:
                    reasons[i] = why
            if not want:
                break
            # one generate call per round when the sampler takes a count per prompt; else one per count
            calls = (
                [list(want)] if counts_ok else [[i for i in want if want[i] == d] for d in sorted(set(want.values()))]
            )
            for idx in calls:
                # a distinct seed per call: repeated calls must not replay the same random stream
                params = dataclasses.replace(self.params, seed=_derive_seed(self.params.seed, index, batch))
                batch += 1
                counts = [want[i] for i in idx]
                n_arg: Any = counts if counts_ok else counts[0]  # a count per prompt where accepted
                outs = sampler.generate([self.prompts[i] for i in idx], n_arg, params)
                self.generate_calls += 1
                if len(outs) != len(idx) or any(len(o) != d for o, d in zip(outs, counts)):
                    raise RuntimeError(
                        f"sampler.generate returned the wrong shape for {len(idx)} prompts "
                        f"(asked for {counts[:5]}{'...' if len(counts) > 5 else ''} samples)"
                    )
                for j, completions in zip(idx, outs):
                    ans = self.examples[j].answer
                    correct[j] += sum(bool(self.grader.is_correct(t, ans)) for t in completions)
                    drawn[j] += len(completions)
                self.samples_drawn += sum(counts)
                if bar is not None:
                    bar.update(sum(counts))
        if bar is not None:
            bar.close()
        return correct, drawn, reasons


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_deferred_memory(model: Any, n_checkpoints: int, available: int | None = None) -> int:
    """Refuse deferred tracking, before training starts, if its weight copies cannot fit in memory.

    Deferred tracking keeps one CPU copy of the trainable weights per intermediate checkpoint
    (plus one of the final weights while it re-samples). Returns the bytes it needs; raises
    ConfigError if that exceeds 80% of the memory available now.
    """
    per_copy = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    need = per_copy * max(int(n_checkpoints), 1)
    avail = available_memory() if available is None else available
    if avail is not None and need > 0.8 * avail:
        gib = 2**30
        raise ConfigError(
            f"deferred tracking would keep {max(int(n_checkpoints), 1)} copies of "
            f"{per_copy / gib:.2f} GiB of trainable weights ({need / gib:.1f} GiB) but only "
            f"{avail / gib:.1f} GiB of memory is available; train LoRA adapters, use fewer "
            "checkpoints, or track without defer"
        )
    return need


def take_snapshot(model: Any) -> dict[str, Any]:
    """A CPU copy of ``model``'s trainable parameters (the weights that change in training)."""
    snap = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}
    if not snap:
        raise ConfigError(
            "deferred tracking found no trainable parameters in the model to copy; "
            "is it being trained? (use lazy tracking without defer)"
        )
    return snap


def load_snapshot(model: Any, snap: dict[str, Any]) -> None:
    """Copy a `take_snapshot` result back into ``model``'s parameters, in place."""
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in snap if n not in params]
    if missing:
        raise ConfigError(f"cannot restore weights: the model has no parameter(s) {missing[:3]}")
    with torch.no_grad():
        for name, value in snap.items():
            params[name].copy_(value)


def _derive_seed(seed: int, checkpoint: int, batch: int) -> int:
    return (int(seed) * 1_000_003 + checkpoint * 10_007 + batch) % (2**31 - 1)


def check_references(
    examples: Sequence[Example], grader: Any, fmt: PromptFormat | None = None, allow_bad_references: bool = False
) -> int:
    """Check that every example's target grades as correct against its answer.

    The target text (without the format's stop string) is what a perfectly trained model would
    sample, so it must grade correct; otherwise PreMemAcc measures the grader, not the model.
    Returns the number of failing examples; raises DataError unless ``allow_bad_references``.
    """
    fmt = fmt or PromptFormat()
    bad = []
    for ex in examples:
        text = fmt.target_text(ex)
        for stop in fmt.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        if not grader.is_correct(text, ex.answer):
            bad.append(ex.id)
    if bad and not allow_bad_references:
        raise DataError(
            f"{len(bad)} of {len(examples)} reference solutions do not grade as correct "
            f"with grader {getattr(grader, 'name', grader)!r} (e.g. {', '.join(bad[:3])}); fix the "
            "answers or the grader, or pass allow_bad_references=True (--allow-bad-references)"
        )
    return len(bad)


def validate_premem(
    examples: Sequence[Example],
    grader: Any,
    *,
    fmt: PromptFormat,
    train_settings: Any,
    k: int,
    p: float,
    allow_bad_references: bool = False,
    num_processes: int = 1,
) -> int:
    """Every check `curator.engine.track_premem` makes before a model loads; returns the checkpoint count."""
    problems = check_premem_settings(len(examples), k, p)
    n_ckpt = None
    if examples:
        try:
            n_ckpt = train_settings.n_checkpoints(len(examples), num_processes)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    check_references(examples, grader, fmt, allow_bad_references)
    assert n_ckpt is not None  # set whenever there are examples, and no examples is a problem above
    return int(n_ckpt)
