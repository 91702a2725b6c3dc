"""The model organism: build time, and where a curation run's time goes.

1. Build: pretrain the organism (default settings unless --organism gives a spec) into a temporary
   directory, timed per phase (corpus, tokenizer, training, saving).
2. A curation run on it (recipes/organism-compare.yaml, one seed; fewer rounds or strategies with
   --rounds / --strategies), with the public entry points timed: training (`finetune`, without
   the dynamics measured inside its checkpoint callback), sampling (`HFSampler.generate`, split
   into test evaluation and the rest: dynamics and the answers strategies ask for), scoring
   (`HFSampler.target_logprobs`: perplexities and losses), selection (`run_selection`, without the
   sampling and scoring it triggers). Time is charged to the innermost timed call, so the shares
   add up; "other" is the rest (loading, embeddings, MLflow, files).

    python bench/bench_organism.py                       # build + 2 rounds, all strategies
    python bench/bench_organism.py --no-build --rounds 4 --strategies iid,premem-threshold

Figures go in docs/PERFORMANCE.md ("Model organism"). Say how loaded the machine was: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict


class Timers:
    """Seconds per category, each moment charged to the innermost running timed call."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [category, start of the current uncharged stretch]

    def wrap(self, fn, category):
        timers = self

        def timed(*a, **k):
            now = time.perf_counter()
            if timers.stack:  # pause the caller's category
                top = timers.stack[-1]
                timers.seconds[top[0]] += now - top[1]
            cat = category(timers) if callable(category) else category
            timers.stack.append([cat, now])
            try:
                return fn(*a, **k)
            finally:
                end = time.perf_counter()
                c, start = timers.stack.pop()
                timers.seconds[c] += end - start
                if timers.stack:
                    timers.stack[-1][1] = end

        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", default="organism", help="organism spec to build (default settings)")
    ap.add_argument("--no-build", action="store_true", help="skip the build timing")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--strategies", default="", help="comma list (default: the recipe's, all built-ins)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine?)")

    if not args.no_build:
        from curator.organism import build, parse_spec

        t, t0 = {}, time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            build(parse_spec(args.organism), d, progress=False, timings=t)
        total = time.perf_counter() - t0
        print(
            f"build {args.organism}: {total:.1f} s  ("
            + ", ".join(f"{k} {v:.1f} s = {v / total:.0%}" for k, v in t.items())
            + ")"
        )

    import curator.evaluation
    import curator.strategy
    import curator.training
    from curator.recipes import load_recipe
    from curator.run import run_recipe
    from curator.sampling.hf import HFSampler

    T = Timers()
    curator.training.finetune = T.wrap(curator.training.finetune, "training")
    curator.strategy.run_selection = T.wrap(curator.strategy.run_selection, "selection")
    curator.evaluation.evaluate_accuracy = T.wrap(curator.evaluation.evaluate_accuracy, "evaluation")
    HFSampler.generate = T.wrap(
        HFSampler.generate,
        lambda t: "sampling: test" if any(c == "evaluation" for c, _ in t.stack) else "sampling: dynamics + signals",
    )
    HFSampler.target_logprobs = T.wrap(HFSampler.target_logprobs, "scoring")

    with tempfile.TemporaryDirectory() as d:
        sets = [f"output_dir={d}/run", f"loop.rounds={args.rounds}", "seeds=null"]
        if args.strategies:
            sets.append("strategies=[" + ", ".join(f"{{name: {s}}}" for s in args.strategies.split(",")) + "]")
        recipe = load_recipe("organism-compare", sets)
        t0 = time.perf_counter()
        run_recipe(recipe, progress=False, echo=lambda *_: None)
        total = time.perf_counter() - t0
    shares = dict(T.seconds)
    shares["other"] = total - sum(shares.values())
    print(f"curation run: {len(recipe.strategies)} strategies x {args.rounds} rounds, one seed: {total:.1f} s")
    for k, v in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {k:30s} {v:8.1f} s  {v / total:6.1%}")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
