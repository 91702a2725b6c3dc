"""Claim 2 on the model organism (issue 19): accuracy under forced response prefixes, per PreMemAcc bucket.

For each seed, finetune the organism on an i.i.d. training set at the benchmark's settings (the
recipe's lr, epochs, batch, schedule and tracking; `bench/regime_map.py`'s draw for that seed),
take every training example's final PreMemAcc from the round's ledger, and sample each training
question k times unperturbed and with each forced prefix (`curator.analysis.robustness`, what
`curate robustness` runs). One JSON line per seed; rerunning skips finished seeds.

    python bench/robustness_organism.py --seeds 0,1,2,3,4 --n 432
    python bench/robustness_organism.py --table          # print the table only

The paper's prefixes ("First", "We know that") are not words of the organism's vocabulary
(`curate robustness` refuses them); its analogues here are 'So', which opens 23% of the task's
solutions ('So the number of ...'), and 'There', a word of its questions that no solution contains.

The table pools the seeds: per bucket, the mean accuracy of each condition over the examples of all
seeds, and the drop (unperturbed minus prefix) with a 95% t interval over the seeds' bucket means
(seeds where the bucket is empty are left out of that interval).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claim1_seeds import t_interval  # noqa: E402
from regime_map import Organism, append_row, read_rows, training_set  # noqa: E402

PREFIXES = ("So", "There")


def run_seed(org: Organism, n: int, seed: int, k: int) -> dict[str, Any]:
    import dataclasses

    from curator.analysis.robustness import final_premem, robustness
    from curator.dynamics import metrics

    rec = org.recipe
    train = training_set(rec, n, seed)[:n]
    t0 = time.time()
    # the benchmark's own settings, lazy tracking as the loop runs (final PreMemAcc is exact)
    res = org.finetune(train, dataclasses.replace(rec.training, seed=seed), seed, lazy=rec.dynamics.lazy)
    trained = time.time() - t0
    last = max(res.ledger.pivot("perplexity").columns)
    params = rec.dynamics.sampling(rec.format.stop, seed=seed + 1000)
    report = robustness(
        org.provider.sampler(res.model),
        train,
        rec.format,
        org.grader,
        final_premem(res.ledger),
        prefixes=PREFIXES,
        k=k,
        params=params,
        tokenizer=org.base.tokenizer,
    )
    per = report.per_example
    return {
        "seed": seed,
        "n": n,
        "k": k,
        "prefixes": list(PREFIXES),
        "test_acc": float(res.test_accuracy),
        "memorized": float(metrics.fraction_memorized(res.ledger)[last]),
        "premem_mean": float(per["premem"].mean()),
        "per_example": per.to_dict(orient="list"),
        "seconds_train": round(trained, 1),
        "seconds_probe": round(time.time() - t0 - trained, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    from curator.analysis.robustness import DEFAULT_EDGES, UNPERTURBED, bucket_labels

    if not rows:
        return "(no seeds yet)"
    prefixes = rows[0]["prefixes"]
    frames = [pd.DataFrame(r["per_example"]).assign(seed=r["seed"]) for r in rows]
    per = pd.concat(frames, ignore_index=True)
    seeds = sorted(per["seed"].unique())
    head = ["PreMemAcc", "n (all seeds)", "unperturbed"]
    for p in prefixes:
        head += [f'"{p}…"', f'drop "{p}…" [95% over seeds]']
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in bucket_labels(DEFAULT_EDGES):
        g = per[per["bucket"] == b]
        if g.empty:
            lines.append(f"| {b} | 0 |" + " – |" * (len(head) - 2))
            continue
        cells = [b, str(len(g)), f"{g[UNPERTURBED].mean():.3f}"]
        for p in prefixes:
            drops = [float((s[UNPERTURBED] - s[p]).mean()) for _, s in g.groupby("seed") if len(s)]
            m, lo, hi = t_interval(drops)
            iv = f"[{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo) else "(one seed)"
            cells += [f"{g[p].mean():.3f}", f"{m:+.3f} {iv} ({len(drops)} seeds)"]
        lines.append("| " + " | ".join(cells) + " |")
    summary = ", ".join(
        f"seed {r['seed']}: test {r['test_acc']:.3f}, memorized {r['memorized']:.2f}, "
        f"{r['seconds_train']:.0f}+{r['seconds_probe']:.0f} s"
        for r in sorted(rows, key=lambda r: r["seed"])
    )
    return "\n".join(lines) + f"\n\n{len(seeds)} seeds, k = {rows[0]['k']}, n = {rows[0]['n']} each ({summary})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="organism-kang", help="the benchmark settings to train with")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--n", type=int, default=432, help="training examples per seed")
    ap.add_argument("--k", type=int, default=4, help="samples per question and condition")
    ap.add_argument("--test-n", type=int, default=500)
    ap.add_argument("--out", default="bench/results/robustness/organism.jsonl")
    ap.add_argument("--table", action="store_true", help="print the table of the finished seeds only")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.table:
        from curator.recipes import load_recipe

        done = {(r["seed"], r["n"], r["k"]) for r in read_rows(out)}
        recipe = load_recipe(args.recipe)
        org = Organism(recipe.model.name, recipe, args.test_n)
        for s in (int(x) for x in args.seeds.split(",") if x.strip()):
            if (s, args.n, args.k) in done:
                continue
            row = run_seed(org, args.n, s, args.k)
            append_row(out, row)
            print(f"seed {s}: test {row['test_acc']:.3f}, memorized {row['memorized']:.2f}", flush=True)
    rows = [r for r in read_rows(out) if r["n"] == args.n and r["k"] == args.k]
    print(table(rows))


if __name__ == "__main__":
    main()
