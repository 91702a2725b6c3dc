"""The organism's text: its pretraining corpus (terse style, uneven skills) and its tokenizer.

Pretraining answers a problem in a *terse* style — the bare equations of one valid trace, then the
answer — while finetuning targets are the synthetic task's verbose traces, so target perplexity and
correctness can part ways (docs/ORGANISM.md).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from curator.data.example import Example
from curator.data.synthetic import SKILLS, SyntheticTask
from curator.data.tokenizer import piece_tokenizer

# one piece per: '####', a word (with its leading space or newline), one digit, one other character
PIECE = r"[ \n]?####|[ \n]?[A-Za-z]+|[ \n]?[0-9]|[ \n]?[^\sA-Za-z0-9]|\s"
_EQUATION = re.compile(r"([0-9][0-9 +\-*/()]*[0-9)])\s*=\s*([0-9]+)")


def terse_solution(trace: str, answer: str) -> str:
    """The bare equations of a verbose trace, one per line, then ``#### answer``."""
    eqs = [f"{lhs.strip()} = {rhs}" for lhs, rhs in _EQUATION.findall(trace)]
    return "\n".join(eqs + [f"#### {answer}"])


def skill_counts(coverage: Mapping[str, float], n: int) -> dict[str, int]:
    """Problems per skill for a corpus of ``n`` (largest remainders, so they sum to ``n``)."""
    total = sum(coverage.values())
    raw = {s: n * c / total for s, c in coverage.items()}
    counts = {s: int(v) for s, v in raw.items()}
    for s in sorted(raw, key=lambda s: (counts[s] - raw[s], s))[: n - sum(counts.values())]:
        counts[s] += 1
    return counts


def pretraining_corpus(
    task: SyntheticTask, coverage: Mapping[str, float], n: int, seed: int, verbose_share: float = 0.0
) -> list[Example]:
    """``n`` problems drawn per skill by ``coverage``, answered in the terse style (a random
    ``verbose_share`` of them in the verbose one instead).

    The answer follows a random one of the problem's valid traces (so the order of independent
    steps varies). Deterministic in (task, coverage, n, seed, verbose_share).
    """
    rng = random.Random(f"organism-corpus:{seed}")
    out: list[Example] = []
    for i, (skill, count) in enumerate(sorted(skill_counts(coverage, n).items())):
        if count == 0:
            continue
        sub = SyntheticTask(
            min_steps=task.min_steps,
            max_steps=task.max_steps,
            max_operand=task.max_operand,
            distractors=task.distractors,
            n_traces=task.n_traces,
            skills=(skill,),
        )
        for ex in sub.generate(count, seed=seed * 1000 + 17 + i):
            trace = rng.choice(ex.meta["traces"])
            verbose = rng.random() < verbose_share
            out.append(
                Example.make(
                    ex.question,
                    trace if verbose else terse_solution(trace, ex.answer),
                    ex.answer,
                    skill=skill,
                    style="verbose" if verbose else "terse",
                )
            )
    rng.shuffle(out)
    return out


def task_texts(task: SyntheticTask, seed: int, per_skill: int = 400) -> Iterable[str]:
    """Text covering the words of every skill the task can ask (questions and all traces)."""
    for i, skill in enumerate(SKILLS):
        sub = SyntheticTask(
            min_steps=task.min_steps,
            max_steps=task.max_steps,
            max_operand=task.max_operand,
            distractors=max(task.distractors, 2),
            n_traces=task.n_traces,
            skills=(skill,),
        )
        for ex in sub.generate(per_skill, seed=seed * 1000 + 500 + i):
            yield ex.question
            yield from ex.meta["traces"]


def vocabulary(texts: Iterable[str], extra: Sequence[str] = ()) -> list[str]:
    """Every piece of ``texts`` (sorted, so the ids do not depend on text order), plus fixed ones."""
    pat = re.compile(PIECE)
    pieces = set(extra)
    for t in texts:
        pieces.update(pat.findall(t))
    for d in "0123456789":
        pieces.update({d, " " + d, "\n" + d})
    return sorted(pieces)


def build_tokenizer(pieces: Sequence[str]) -> Any:
    """A word-level PreTrainedTokenizerFast over ``pieces``: BOS prepended, exact round trip."""
    return piece_tokenizer(pieces, PIECE, model_max_length=1024)
