"""What each strategy of a `curate run` directory bought (skills) and spent (compute), over seeds.

    python bench/curation_report.py runs/organism-kang [--pool SPEC]

Reads only the run directory (every seed-<n>/ folder, every finished round): the examples each
strategy added beyond the seed set, with their skill (``meta["skill"]``, from the pool for pool
examples and from ``new_examples.jsonl`` for generated ones), and per strategy summed over rounds
and seeds: supervised target tokens trained on (epochs x the ledger's target tokens of each
round's training set), completions sampled for the learning dynamics (the ledger's n_samples),
and wall seconds spent training + measuring and selecting (the rounds' metrics). Sampled *tokens*
are not recorded by the loop; completions are. Round 0 trains on the shared seed set once per
seed (a cache) but counts for every strategy: each row is the compute of the run behind its curve.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def collect(run_dir: Path, pool_spec: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(skills: strategy x skill shares + n, compute: strategy x totals)."""
    import yaml

    from curator.data.loaders import load_examples
    from curator.drivers.organism_report import selected_skills
    from curator.rounds import LEDGER, RoundStore, resolved_recipe_file, seed_dirs, strategy_dirs

    seeds = seed_dirs(run_dir) or [run_dir]
    recipe_file = resolved_recipe_file(seeds[0])
    if recipe_file is None:
        raise SystemExit(f"{seeds[0]}: not a `curate run` directory")
    recipe = yaml.safe_load(recipe_file.read_text())
    epochs = int(recipe["training"]["epochs"])
    pool = load_examples(pool_spec or recipe["data"]["pool"])
    compute: dict[str, dict[str, float]] = {}
    for d in seeds:
        for sdir in strategy_dirs(d):
            store = RoundStore(sdir)
            c = compute.setdefault(
                sdir.name,
                {
                    "seeds": 0,
                    "target_tokens_trained": 0,
                    "dynamics_completions": 0,
                    "train_seconds": 0.0,
                    "select_seconds": 0.0,
                },
            )
            c["seeds"] += 1
            for r in store.finished():
                led = pd.read_parquet(store.round_dir(r) / LEDGER)
                per_example = led.groupby("example_id")["target_tokens"].max()
                c["target_tokens_trained"] += int(epochs * per_example.sum())
                c["dynamics_completions"] += int(led["n_samples"].sum())
                m = store.metrics(r)
                c["train_seconds"] += float(m.get("train_seconds", 0.0))
                c["select_seconds"] += float(m.get("select_seconds", 0.0))
    return selected_skills(run_dir, pool), pd.DataFrame(compute).T.sort_index()


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a markdown table (no tabulate dependency)."""

    def cell(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    rows = ["| " + " | ".join([""] + [str(c) for c in df.columns]) + " |", "|" + "---|" * (len(df.columns) + 1)]
    rows += [
        "| " + " | ".join([str(i)] + [cell(v) for v in r]) + " |" for i, r in zip(df.index, df.itertuples(index=False))
    ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--pool", default=None, help="the recipe's data.pool (default: read from the run)")
    args = ap.parse_args()
    skills, compute = collect(args.run_dir, args.pool)
    print("Skills of the examples each strategy added (shares; n = examples over all seeds):\n")
    print(markdown(skills))
    print("\nCompute per strategy, summed over rounds and seeds:\n")
    ints = ["seeds", "target_tokens_trained", "dynamics_completions"]
    compute[ints] = compute[ints].astype(int)
    print(markdown(compute.astype(object), 1))


if __name__ == "__main__":
    main()
