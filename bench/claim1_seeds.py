"""Claim 1 over seeds: each metric's R² against test accuracy, per sweep seed, with intervals over seeds.

`curate sweep organism-sweep --set seed=S --set output_dir=DIR` once per seed writes DIR/predict/
(`ranking.csv`: each metric's R² over that seed's 60 points, with a bootstrap interval over
points). This reads every DIR given and prints, per metric: R² per seed, the mean with a 95% t
interval over seeds, and the paired difference PreMemAcc minus the metric (per seed, then a t
interval over seeds): a difference whose interval excludes 0 is beyond seed noise.

    python bench/claim1_seeds.py runs/organism-sweep runs/organism-sweep-s1 ... [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

REFERENCE = "premem"


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds (curator's own, as `curate compare` uses); NaN
    bounds for one seed."""
    import numpy as np

    from curator.tracking.compare import t_interval as over_rows

    m = float(np.mean(values))
    if len(values) < 2:
        return m, math.nan, math.nan
    lo, hi = over_rows(np.asarray(values, dtype=float))
    return m, float(lo), float(hi)


def read(dirs: list[Path]) -> pd.DataFrame:
    """metric x seed-directory table of R²."""
    cols = {}
    for d in dirs:
        f = d / "predict" / "ranking.csv"
        if not f.exists():
            raise SystemExit(f"{f}: missing; run `curate sweep` (it ends with predict) for {d}")
        r = pd.read_csv(f).dropna(subset=["r2"])
        cols[d.name] = r.set_index("metric")["r2"]
        labels = r.set_index("metric")["label"]
    table = pd.DataFrame(cols)
    table.index = [labels.get(m, m) if m != REFERENCE else m for m in table.index]
    return table


def report(table: pd.DataFrame) -> str:
    ref = table.loc[REFERENCE]
    rows = []
    for metric, r2 in table.iterrows():
        m, lo, hi = t_interval(list(r2))
        line = {
            "metric": "PreMemAcc (p=1.105)" if metric == REFERENCE else metric,
            "R² per seed": " / ".join(f"{v:.3f}" for v in r2),
            "mean R² [95% over seeds]": f"{m:.3f} [{lo:.3f}, {hi:.3f}]",
        }
        if metric == REFERENCE:
            line["PreMemAcc − metric [95%]"] = "–"
        else:
            dm, dlo, dhi = t_interval(list(ref - r2))
            verdict = "PreMemAcc better" if dlo > 0 else "metric better" if dhi < 0 else "within noise"
            line["PreMemAcc − metric [95%]"] = f"{dm:+.3f} [{dlo:+.3f}, {dhi:+.3f}] ({verdict})"
        rows.append((m, line))
    rows.sort(key=lambda x: -x[0])
    head = list(rows[0][1])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(line[h] for h in head) + " |" for _, line in rows]
    return "\n".join(out) + f"\n\n{table.shape[1]} seeds ({', '.join(table.columns)}); t intervals over seeds."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()
    text = report(read(args.dirs))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
