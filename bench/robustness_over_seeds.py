"""Claim 2 over seeds: accuracy drop under forced prefixes per PreMemAcc bucket, with intervals.

    python bench/robustness_over_seeds.py runs/claim2/seed-0/robustness runs/claim2/seed-1/robustness ...

Each argument is a `curate robustness --out` directory (its robustness_examples.csv: one row per
training query with its PreMemAcc bucket and accuracy per condition). For every bucket and prefix
it prints the mean accuracy and the mean drop (unperturbed minus prefixed) with a 95% interval
from a two-stage bootstrap — seeds resampled, then queries within each drawn seed — so the
interval carries the seed-to-seed spread, not only the queries'. "Beyond noise" compares the
lowest with the highest occupied bucket: the paired difference of their drops, same bootstrap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

UNPERTURBED = "unperturbed"


def load(dirs: list[Path]) -> pd.DataFrame:
    frames = []
    for s, d in enumerate(dirs):
        df = pd.read_csv(d / "robustness_examples.csv")
        df["seed"] = s
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def bootstrap_means(df: pd.DataFrame, cols: list[str], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, len(buckets), len(cols)] bucket means of cols under the two-stage bootstrap."""
    buckets = sorted(df["bucket"].unique())
    seeds = sorted(df["seed"].unique())
    by_seed = {s: df[df["seed"] == s] for s in seeds}
    out = np.full((n_boot, len(buckets), len(cols)), np.nan)
    for b in range(n_boot):
        drawn = [by_seed[s] for s in rng.choice(seeds, size=len(seeds), replace=True)]
        sample = pd.concat([g.iloc[rng.integers(len(g), size=len(g))] for g in drawn])
        means = sample.groupby("bucket")[cols].mean()
        for i, bk in enumerate(buckets):
            if bk in means.index:
                out[b, i] = means.loc[bk].to_numpy()
    return out


def report(df: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> str:
    prefixes = [c for c in df.columns if c not in ("example_id", "premem", "bucket", "seed", UNPERTURBED)]
    for p in prefixes:
        df[f"drop: {p}"] = df[UNPERTURBED] - df[p]
    cols = [UNPERTURBED, *prefixes, *[f"drop: {p}" for p in prefixes]]
    buckets = sorted(df["bucket"].unique())
    point = df.groupby("bucket")[cols].mean()
    boot = bootstrap_means(df, cols, n_boot, np.random.default_rng(seed))
    lo, hi = np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)
    n = df.groupby("bucket").size()
    lines = [
        f"{df['seed'].nunique()} seeds, {len(df)} training queries; 95% intervals: two-stage bootstrap "
        f"(seeds, then queries), {n_boot} draws.",
        "",
        "| PreMemAcc | n | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for i, bk in enumerate(buckets):
        cells = [f"{point.loc[bk, c]:.3f} [{lo[i, j]:.3f}, {hi[i, j]:.3f}]" for j, c in enumerate(cols)]
        lines.append(f"| {bk} | {int(n[bk])} | " + " | ".join(cells) + " |")
    if len(buckets) >= 2:
        lines.append("")
        for p in prefixes:
            j = cols.index(f"drop: {p}")
            diff = boot[:, 0, j] - boot[:, -1, j]
            d_lo, d_hi = np.nanpercentile(diff, [2.5, 97.5])
            d = point.loc[buckets[0], f"drop: {p}"] - point.loc[buckets[-1], f"drop: {p}"]
            verdict = "yes" if d_lo > 0 or d_hi < 0 else "no"
            lines.append(
                f'- "{p}": drop in the lowest bucket ({buckets[0]}) minus drop in the highest ({buckets[-1]}) = '
                f"{d:+.3f} [{d_lo:+.3f}, {d_hi:+.3f}]; beyond noise: {verdict}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    print(report(load(args.dirs), args.n_boot))


if __name__ == "__main__":
    main()
