"""Routing monitors: pathway edit distances at scale, and the cost of router capture.

    python bench/bench_routing.py [--n 10000] [--layers 16] [--experts 8] [--threads 2] [--all-pairs]

1. Edit distances for N pathways of L layers (routing drawn per layer from a Dirichlet over E
   experts, top-2 dispatch, kept up to cumulative weight 0.8; ``--tokens`` sets how spread out):
   the sampled estimate (200,000 pairs) with its standard error, its agreement with the exact mean
   on the first 1,000 pathways (0.5M pairs), and the all-pairs throughput; ``--all-pairs`` also
   runs all N(N-1)/2 pairs.
2. Router capture overhead: forward passes of a small MoE (Mixtral layout, 4 layers, 8 experts)
   alone, inside `RoutingCapture` (hooks recording the dispatch), and through `sample_routing`
   (hooks + per-sample aggregation), interleaved in one process; median ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def make_weights(n: int, layers: int, experts: int, tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # each sample's per-layer routing: the mean of `tokens` tokens' top-2 dispatch distributions
    w = np.zeros((n, layers, experts))
    for _ in range(tokens):
        p = rng.dirichlet(np.full(experts, 0.3), size=(n, layers))
        top = np.argsort(-p, -1)[..., :2]
        v = np.take_along_axis(p, top, -1)
        np.put_along_axis(w, top, np.take_along_axis(w, top, -1) + v / v.sum(-1, keepdims=True), -1)
    return w / tokens


def bench_distances(args) -> None:
    from curator.dynamics.routing import PathwaySet, pathway_distance

    w = make_weights(args.n, args.layers, args.experts, args.tokens)
    t0 = time.perf_counter()
    ps = PathwaySet.from_weights(w, 0.8)
    _ = ps.peq
    build = time.perf_counter() - t0
    lens = ps.lengths
    print(
        f"{args.n} pathways x {args.layers} layers ({args.experts} experts): {lens.mean():.1f} symbols on "
        f"average (max {lens.max()}); built in {build:.2f} s"
    )
    t0 = time.perf_counter()
    est = pathway_distance(ps, max_pairs=200_000, seed=1, threads=args.threads)
    dt = time.perf_counter() - t0
    print(f"sampled estimate: {est.mean:.4f} +- {est.se:.4f} (se, {est.n_pairs} pairs) in {dt:.2f} s")
    sub = ps.subset(np.arange(1000))
    t0 = time.perf_counter()
    exact = pathway_distance(sub, max_pairs=10**7, threads=args.threads)
    dt_sub = time.perf_counter() - t0
    samp = pathway_distance(sub, max_pairs=200_000, seed=2, threads=args.threads)
    z = (samp.mean - exact.mean) / samp.se
    rate = exact.n_pairs / dt_sub
    total = args.n * (args.n - 1) // 2
    print(
        f"check on 1000 pathways: exact {exact.mean:.4f} over {exact.n_pairs} pairs in {dt_sub:.2f} s "
        f"({rate / 1e6:.2f}M pairs/s); sampled {samp.mean:.4f} +- {samp.se:.4f} (z = {z:+.2f})"
    )
    print(f"all {total} pairs of {args.n}: projected {total / rate:.1f} s at that rate ({args.threads} thread(s))")
    if args.all_pairs:
        t0 = time.perf_counter()
        full = pathway_distance(ps, max_pairs=total, threads=args.threads)
        dt = time.perf_counter() - t0
        print(
            f"all pairs, measured: {full.mean:.4f} in {dt:.1f} s; sampled estimate off by "
            f"{(est.mean - full.mean) / est.se:+.2f} se"
        )


def bench_capture(args) -> None:
    import torch

    from curator.dynamics.routing import RoutingCapture, sample_routing
    from curator.models.moe import small_moe
    from curator.models.tiny import tiny_tokenizer

    model = small_moe(0, tiny_tokenizer()).eval()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(4, 90, args.seq_len).tolist() for _ in range(args.batch)]
    ids = torch.tensor(seqs)
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {"plain": [], "capture": [], "sample_routing": []}

    def plain():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    def capture():
        with torch.no_grad(), RoutingCapture(model):
            model(input_ids=ids, attention_mask=mask)

    def aggregate():
        sample_routing(model, seqs, batch_size=args.batch)

    plain()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("capture", capture), ("sample_routing", aggregate)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    print(f"forward of {args.batch} x {args.seq_len} tokens: plain {base * 1e3:.1f} ms (median of {args.repeats})")
    for name in ("capture", "sample_routing"):
        t = statistics.median(times[name])
        print(f"  {name:15s} {t * 1e3:.1f} ms  overhead {100 * (t / base - 1):+.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument(
        "--tokens",
        type=int,
        default=1,
        help="token distributions averaged per sample and layer (1: 1-2 experts per layer; "
        "4: about 4, pathways over 64 symbols)",
    )
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-pairs", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    bench_distances(args)
    if not args.skip_capture:
        bench_capture(args)


if __name__ == "__main__":
    main()
