"""Reports on the model organism (docs/ORGANISM.md): what a model can do per skill (greedy accuracy
on fresh problems of each), and which skills each strategy of a run directory chose.

A driver: it samples from a model and reads run directories, so it lives above the library.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.data.synthetic import SKILLS, SyntheticTask
from curator.evaluation import evaluate_accuracy
from curator.rounds import RoundStore, read_seed_ids, seed_dirs, strategy_dirs
from curator.sampling.base import SamplingParams
from curator.sampling.hf import HFSampler


def skill_accuracy(
    loaded: Any,
    task: SyntheticTask,
    n_per_skill: int = 100,
    seed: int = 7,
    max_new_tokens: int = 64,
    batch_size: int = 128,
) -> dict[str, float]:
    """Skill -> greedy accuracy of ``loaded`` (a LoadedModel) on ``n_per_skill`` new problems.

    The prompt is the paper's (``question + "\\nAnswer:"``), so it measures what the model does
    with the recipes' format, in whatever solution style it writes.
    """
    sampler = HFSampler.from_loaded(loaded, batch_size=batch_size)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    grader, fmt = get_grader("gsm8k"), PromptFormat()
    out = {}
    for i, skill in enumerate(SKILLS):
        sub = SyntheticTask(
            min_steps=task.min_steps,
            max_steps=task.max_steps,
            max_operand=task.max_operand,
            n_traces=task.n_traces,
            skills=(skill,),
        )
        test = sub.generate(n_per_skill, seed=seed * 100 + i)
        out[skill] = evaluate_accuracy(sampler, test, fmt, grader, params).accuracy
    return out


def selected_skills(run_dir: Any, pool: Any) -> Any:
    """Share of each skill among the examples each strategy *added* (beyond the seed set), over
    every seed and finished round of a run directory (one run or ``seed-<n>/`` sub-directories).

    Args:
        run_dir: a `curate run` output directory.
        pool: the pool's Examples (their ``meta["skill"]`` is read; examples a generator made are
            read from each round's ``new_examples``).

    Returns:
        A DataFrame: one row per strategy, one column per skill (shares summing to 1), plus ``n``.
    """
    skill_of = {e.id: (e.meta or {}).get("skill", "?") for e in pool}
    counts: dict[str, dict[str, int]] = {}
    for d in seed_dirs(run_dir) or [run_dir]:
        seed_ids = set(read_seed_ids(d))
        for sdir in strategy_dirs(d):
            store = RoundStore(sdir)
            done = store.finished()
            if len(done) < 2:
                continue
            # the last finished round trained on what the round before it chose: everything
            # selected so far that has also been trained on
            trained = set(store.next_train_ids(done[-2]))
            for r in done:  # generator mode: made examples carry their own skill
                skill_of.update((e.id, (e.meta or {}).get("skill", "?")) for e in store.new_examples(r))
            c = counts.setdefault(sdir.name, {})
            for i in trained - seed_ids:
                c[skill_of.get(i, "?")] = c.get(skill_of.get(i, "?"), 0) + 1
    table = pd.DataFrame(counts).T.fillna(0)
    n = table.sum(axis=1)
    table = table.div(n, axis=0).round(3)
    table["n"] = n.astype(int)
    return table.sort_index()
