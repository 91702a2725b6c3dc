"""Selection at scale: pick k=10,000 of N=1,000,000 candidates with 384-dim embeddings.

For `embedding-diversity` and `premem-threshold`: wall time of `run_selection` (embeddings already
computed and cached, as after the loop's signal pass), the process's peak RSS, and the ratio to a
straightforward numpy implementation run in the same process on the same data.

Each strategy runs in its own child process so peak RSS is its own. Data: N unit vectors around
`--clusters` random centers (float32), a training set of `--train` vectors from the same
distribution, 20% of them with PreMemAcc below t=0.5.

    python bench/bench_selection.py            # the full size (minutes; ~2 GB per child)
    python bench/bench_selection.py --n 100000 --k 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def clustered(n: int, dim: int, centers: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    X = np.empty((n, dim), np.float32)
    lab = rng.integers(len(centers), size=n)
    for s in range(0, n, 65536):  # in chunks: no float64 / full-size temporaries
        x = centers[lab[s : s + 65536]] + rng.standard_normal((min(n, s + 65536) - s, dim), dtype=np.float32) * noise
        X[s : s + 65536] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return X


def make_world(a):
    from curator.data.example import Example
    from curator.dynamics.ledger import Ledger

    rng = np.random.default_rng(a.seed)
    centers = rng.standard_normal((a.clusters, a.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    X = clustered(a.n, a.dim, centers, rng, a.noise)
    T = clustered(a.train, a.dim, centers, rng, a.noise)
    pool = [Example(f"c{i}", "", "", "") for i in range(a.n)]
    train = [Example(f"t{i}", "", "", "") for i in range(a.train)]
    low = rng.random(a.train) < 0.2  # 20% of the training set below t=0.5
    correct = np.where(low, 1, 5)
    ledger = Ledger.from_arrays(
        [t.id for t in train],
        np.stack([np.zeros(a.train), correct], 1),
        k=5,
        perplexity=np.full((a.train, 2), 3.0),
        p=1.105,
    )
    return X, T, pool, train, ledger, low


# -- straightforward numpy baselines --------------------------------------------------------------
def numpy_kcenter(X, T, k, picks_timed):
    """Textbook farthest-point: full distance update per pick. Returns (seconds for k, extrapolated?)."""
    t0 = time.perf_counter()
    sq = np.einsum("ij,ij->i", X, X)
    d = np.full(len(X), np.inf, np.float32)
    for s in range(0, len(X), 65536):  # initial covered set: the training set
        S = X[s : s + 65536] @ T.T
        d[s : s + 65536] = (sq[s : s + 65536, None] - 2 * S + np.einsum("ij,ij->i", T, T)[None]).min(1)
    t_init = time.perf_counter() - t0
    n = min(k, picks_timed)
    t1 = time.perf_counter()
    for _ in range(n):
        i = int(np.argmax(d))
        c = X[i]
        np.minimum(d, sq - 2 * (X @ c) + c @ c, out=d)
        d[i] = -1
    per_pick = (time.perf_counter() - t1) / n
    return t_init + per_pick * k, n < k, n


def numpy_premem(X, targets, k, targets_timed):
    """Textbook nearest-per-target: a full similarity scan and sort per target, then round-robin."""
    q = int(np.ceil(k / len(targets))) + 8
    n = min(len(targets), targets_timed)
    t0 = time.perf_counter()
    lists = []
    best = np.full(len(X), -np.inf, np.float32)
    for t in targets[:n]:
        sims = X @ t
        np.maximum(best, sims, out=best)
        lists.append(np.argsort(-sims, kind="stable")[:q])
    per_target = (time.perf_counter() - t0) / n
    t1 = time.perf_counter()
    taken, out = set(), []
    for r in range(q):
        for lst in lists:
            if lst[r] not in taken and len(out) < k:
                taken.add(lst[r])
                out.append(lst[r])
    rr = time.perf_counter() - t1
    return per_target * len(targets) + rr, n < len(targets), n


def child(a) -> dict:
    from curator.signals import Signals
    from curator.strategy import SelectionContext, build_strategy, run_selection

    t0 = time.perf_counter()
    X, T, pool, train, ledger, low = make_world(a)
    gen_s = time.perf_counter() - t0
    sig = Signals(key="bench")
    sig.put("embeddings", pool, X)
    sig.put("embeddings", train, T)
    rss_before = peak_rss_gib()
    ctx = SelectionContext(
        pool=pool, train=train, ledger=ledger, signals=sig, rng=np.random.default_rng(a.seed), p=1.105
    )
    strat = build_strategy(a.one)
    t1, c1 = time.perf_counter(), time.process_time()
    sel = run_selection(strat, ctx, a.k)
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    rss = peak_rss_gib()
    assert len(sel.ids) == a.k and len(sel.scores) >= a.n
    if a.one == "embedding-diversity":
        base, extrap, done = numpy_kcenter(X, T, a.k, a.baseline_picks)
        base_what = f"{done} of {a.k} picks timed, extrapolated" if extrap else "all picks"
    else:
        base, extrap, done = numpy_premem(X, T[low], a.k, a.baseline_targets)
        base_what = f"{done} of {int(low.sum())} targets timed, extrapolated" if extrap else "all targets"
    return {
        "strategy": a.one,
        "n": a.n,
        "k": a.k,
        "dim": a.dim,
        "train": a.train,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_gib": round(rss, 2),
        "rss_before_select_gib": round(rss_before, 2),
        "numpy_s": round(base, 1),
        "numpy_extrapolated": extrap,
        "numpy_what": base_what,
        "speedup": round(base / wall, 1),
        "load_avg_1min": os.getloadavg()[0],
        "datagen_s": round(gen_s, 1),
        "note": sel.note,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="candidates in the pool")
    ap.add_argument("--k", type=int, default=10_000, help="examples to select")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--train", type=int, default=1000, help="training-set size (covered centers / targets)")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.03, help="per-dimension noise around a cluster center")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--baseline-picks",
        type=int,
        default=300,
        help="numpy k-center picks actually timed (the rest extrapolated: each pick costs the same)",
    )
    ap.add_argument(
        "--baseline-targets", type=int, default=40, help="numpy premem targets actually timed (the rest extrapolated)"
    )
    ap.add_argument("--strategies", default="embedding-diversity,premem-threshold")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(child(a)))
        return
    import faiss

    print(
        f"select {a.k:,} of {a.n:,} candidates, dim {a.dim}, train {a.train:,}; {faiss.omp_get_max_threads()} threads"
    )
    print(
        f"{'strategy':22s} {'wall s':>8s} {'cpu s':>7s} {'peak RSS GiB':>13s} {'numpy s':>9s} {'ratio':>7s}"
        "  numpy baseline"
    )
    for name in a.strategies.split(","):
        argv = [sys.executable, __file__, "--one", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("one", "strategies")
        ]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(
            f"{r['strategy']:22s} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['peak_rss_gib']:13.2f} {r['numpy_s']:9.1f} "
            f"{r['speedup']:6.1f}x  {r['numpy_what']}" + (f"  [{r['note']}]" if r["note"] else "")
        )
        print("  " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
