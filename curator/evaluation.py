"""Test accuracy of a model state: sample, extract the final answer, grade."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.sampling.base import Sampler, SamplingParams


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # mean over questions of the fraction of correct samples
    n_questions: int
    n_samples: int
    n_correct: int


def evaluate_accuracy(
    sampler: Sampler,
    examples: Sequence[Example],
    fmt: PromptFormat,
    grader: Any,
    params: SamplingParams,
    n: int = 1,
    tokenizer: Any = None,
) -> EvalResult:
    """Accuracy on `examples`; with ``n=1, temperature=0`` this is greedy accuracy."""
    if not examples:
        return EvalResult(float("nan"), 0, 0, 0)
    prompts = [fmt.prompt_text(e, tokenizer) for e in examples]
    return grade_completions(examples, sampler.generate(prompts, n, params), grader)


def grade_completions(examples: Sequence[Example], completions: Sequence[Sequence[str]], grader: Any) -> EvalResult:
    """Accuracy of completions already sampled (one list per example), e.g. reused for ATC."""
    if not examples:
        return EvalResult(float("nan"), 0, 0, 0)
    per_q = []
    total = n_samples = 0
    for ex, comps in zip(examples, completions):
        c = sum(bool(grader.is_correct(x, ex.answer)) for x in comps)
        total += c
        n_samples += len(comps)
        per_q.append(c / len(comps))
    return EvalResult(sum(per_q) / len(per_q), len(examples), n_samples, total)
