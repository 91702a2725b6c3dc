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
import json
from pathlib import Path

import pandas as pd


def _strategy_dirs(seed_dir: Path) -> list[Path]:
    return sorted(p for p in seed_dir.iterdir() if (p / "run.json").exists())


def collect(run_dir: Path, pool_spec: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(skills: strategy x skill shares + n, compute: strategy x totals)."""
    import yaml

    from curator.data.loaders import load_examples
    from curator.rounds import RoundStore
    from curator.tracking.compare import seed_dirs

    seeds = seed_dirs(run_dir) or [run_dir]
    recipe = yaml.safe_load((seeds[0] / "curator-run.yaml").read_text())
    epochs = int(recipe["training"]["epochs"])
    pool = load_examples(pool_spec or recipe["data"]["pool"])
    skill_of = {e.id: (e.meta or {}).get("skill", "?") for e in pool}
    skills: dict[str, dict[str, int]] = {}
    compute: dict[str, dict[str, float]] = {}
    for d in seeds:
        seed_ids = set(json.loads((d / "seed_ids.json").read_text()))
        for sdir in _strategy_dirs(d):
            store = RoundStore(sdir)
            done = [r for r in range(100) if store.is_done(r)]
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
            for r in done:
                for e in store.new_examples(r):
                    skill_of[e.id] = (e.meta or {}).get("skill", "?")
                led = pd.read_parquet(store.round_dir(r) / "ledger.parquet")
                per_example = led.groupby("example_id")["target_tokens"].max()
                c["target_tokens_trained"] += int(epochs * per_example.sum())
                c["dynamics_completions"] += int(led["n_samples"].sum())
                m = store.metrics(r)
                c["train_seconds"] += float(m.get("train_seconds", 0.0))
                c["select_seconds"] += float(m.get("select_seconds", 0.0))
            if len(done) < 2:
                continue
            # the last finished round trained on everything selected before it
            trained = set(store.next_train_ids(done[-2]))
            counts = skills.setdefault(sdir.name, {})
            for i in trained - seed_ids:
                counts[skill_of.get(i, "?")] = counts.get(skill_of.get(i, "?"), 0) + 1
    table = pd.DataFrame(skills).T.fillna(0)
    n = table.sum(axis=1)
    table = table.div(n, axis=0).round(3)
    table["n"] = n.astype(int)
    return table.sort_index(), pd.DataFrame(compute).T.sort_index()


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
