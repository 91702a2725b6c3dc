"""MATH grading: curator's normaliser vs math-verify on the hand-checked pairs, agreement and speed.

Reads tests/data/math_pairs.tsv (expected verdict, predicted answer, reference answer) and grades
every pair both ways round with:

- ``normalizer``: ``MathGrader(symbolic=False)``, string normalisation + numeric equality;
- ``math-verify``: math-verify alone (``symbolic_equivalent``, caches cleared: every pair parsed);
- ``combined``: ``MathGrader()``, the normaliser first and math-verify only where it says "different".

Prints a markdown table (accuracy against the hand labels, false negatives / false positives,
microseconds per pair) and the pairs where the graders disagree.

    python bench/bench_grading.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "math_pairs.tsv"


def load_pairs(path: Path = PAIRS) -> list[tuple[bool, str, str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            expected, pred, ref, why = line.split("\t")
            rows.append((expected == "1", pred, ref, why))
    return rows


def timed(
    fn: Callable[[str, str], bool],
    pairs: list[tuple[bool, str, str, str]],
    repeat: int,
    before: Callable[[], None] = lambda: None,
) -> tuple[list[bool], float]:
    """Verdicts on (pred, ref) and on (ref, pred) for every pair, and the best seconds per call."""
    best = float("inf")
    verdicts: list[bool] = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        verdicts = [fn(p, r) for _, p, r, _ in pairs] + [fn(r, p) for _, p, r, _ in pairs]
        best = min(best, (time.perf_counter() - t0) / (2 * len(pairs)))
    return verdicts, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (the best is reported)")
    args = ap.parse_args()

    from curator.data.grading import MathGrader, _mv_parse, symbolic_equivalent

    pairs = load_pairs()
    truth = [e for e, *_ in pairs] * 2

    def clear() -> None:
        symbolic_equivalent.cache_clear()
        _mv_parse.cache_clear()

    symbolic_equivalent("1", "1")  # import math-verify and sympy outside the timing
    graders = {
        "normalizer": (MathGrader(symbolic=False).equivalent, clear),
        "math-verify": (symbolic_equivalent, clear),
        "combined": (MathGrader().equivalent, clear),
        "combined, cached": (MathGrader().equivalent, lambda: None),
    }
    results = {name: timed(fn, pairs, args.repeat, before) for name, (fn, before) in graders.items()}

    n = len(truth)
    print(f"{len(pairs)} pairs ({sum(e for e, *_ in pairs)} equal), each graded both ways round: {n} checks\n")
    print("| grader | correct | false negatives | false positives | µs per pair | vs normalizer |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = results["normalizer"][1]
    for name, (verdicts, sec) in results.items():
        ok = sum(v == t for v, t in zip(verdicts, truth))
        fn_ = sum(t and not v for v, t in zip(verdicts, truth))
        fp = sum(v and not t for v, t in zip(verdicts, truth))
        print(f"| {name} | {ok}/{n} | {fn_} | {fp} | {1e6 * sec:,.0f} | {sec / base:,.1f}x |")

    print("\npairs where a grader is wrong (expected, pred, ref: normalizer / math-verify / combined):")
    for i, (e, p, r, why) in enumerate(pairs):
        got = [results[g][0][i] for g in ("normalizer", "math-verify", "combined")]
        if any(v != e for v in got):
            print(f"  {int(e)}  {p}  vs  {r}  ({why}):  " + " / ".join(str(int(v)) for v in got))


if __name__ == "__main__":
    main()
