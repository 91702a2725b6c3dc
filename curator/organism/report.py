"""What an organism (or any model) can do per skill: greedy accuracy on fresh problems of each."""

from __future__ import annotations

from typing import Any

from curator.data.synthetic import SKILLS, SyntheticTask


def skill_accuracy(loaded: Any, task: SyntheticTask, n_per_skill: int = 100, seed: int = 7,
                   max_new_tokens: int = 64, batch_size: int = 128) -> dict[str, float]:
    """Skill -> greedy accuracy of ``loaded`` (a LoadedModel) on ``n_per_skill`` new problems.

    The prompt is the paper's (``question + "\\nAnswer:"``), so it measures what the model does
    with the recipes' format, in whatever solution style it writes.
    """
    from curator.data.format import PromptFormat
    from curator.data.grading import get_grader
    from curator.evaluation import evaluate_accuracy
    from curator.sampling.base import SamplingParams
    from curator.sampling.hf import HFSampler

    sampler = HFSampler.from_loaded(loaded, batch_size=batch_size)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    grader, fmt = get_grader("gsm8k"), PromptFormat()
    out = {}
    for i, skill in enumerate(SKILLS):
        sub = SyntheticTask(min_steps=task.min_steps, max_steps=task.max_steps,
                            max_operand=task.max_operand, n_traces=task.n_traces, skills=(skill,))
        test = sub.generate(n_per_skill, seed=seed * 100 + i)
        out[skill] = evaluate_accuracy(sampler, test, fmt, grader, params).accuracy
    return out
