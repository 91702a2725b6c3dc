"""Mixture-of-experts routing monitors (Li, Fan & Zhou, arXiv 2506.21551): pathways, pathway
distance, pathway consistency, and the paper's memorization rule.

The pieces, from the model edge inward (definitions and the choices made: docs/ROUTING.md):

- **capture**: `RoutingCapture` puts forward hooks on the router modules of a supported MoE layout
  (`LAYOUTS`) for the duration of a ``with`` block; outside it the model carries no hook at all.
  Each router returns ``(logits, top-k weights, top-k expert indices)`` per token; the hook keeps
  the weights and indices — exactly the experts the layer dispatched the token to.
- **sample routing**: `sample_routing` turns per-token routing into one distribution over experts
  per (sample, MoE layer): each token's dispatched weights renormalised to sum to 1, averaged over
  the sample's tokens (prompt and target, as trained; padding excluded). [N, L, E].
- **pathway**: per layer, the experts in decreasing weight up to a cumulative weight ``cutoff``
  (0.8 by default, in (0, 1]); the pathway is the layer-by-layer sequence of those sets, each set
  in ascending expert id, every symbol tagged with its layer (expert 3 of layer 0 and expert 3 of
  layer 1 are different symbols).
- **pathway distance**: the mean Levenshtein distance over sample pairs (`pathway_distance`):
  exact over all pairs up to ``max_pairs``, else a uniform sample of pairs with its standard error.
  The batched distance is Myers' bit-parallel algorithm vectorised over pairs (pathways of up to 64
  symbols; longer ones fall back to a vectorised dynamic programme).
- **pathway consistency**: C_i = 1 - (1/(L-1)) sum_l cos(e_l, e_{l+1}) / (max_l cos + 1e-8) with
  e_l the routing-weighted expert embedding of layer l (the router's weight rows, which live in
  the residual stream shared by all layers). As written, C_i grows as consecutive layers route
  in unrelated directions; curator reports ``pathway_consistency = 1 - C_i`` (higher = steadier).
- **memorization rule**: a sample is memorized from the first checkpoint m0 after which its loss
  stays <= epsilon and within delta of its final loss (`memorization_checkpoint`).

Pure functions take numpy arrays; model work stays in `RoutingCapture` / `sample_routing` /
`RoutingMonitor`. Ledger columns: ``pathway`` (string, see `format_pathway`) and
``pathway_consistency`` (float), per (example, checkpoint); `routing_metrics(ledger, ...)` gives the
per-checkpoint dataset values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from curator.console import progress as progress_bar
from curator.data.format import PromptFormat, encode_pair
from curator.dynamics.ledger import Ledger
from curator.errors import DataError, RoutingError
from curator.models.moe import LAYOUTS, supported_layouts  # LAYOUTS: the registry of supported layouts
from curator.sampling.sharded import gather_rows, measuring

if TYPE_CHECKING:  # pragma: no cover
    from curator.dynamics.ledger import Ledger

# config fields that mark a mixture-of-experts model (to tell "unsupported MoE" from "dense")
_MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")
PATHWAY_COLUMNS = ("pathway", "pathway_consistency")
DEFAULT_CUTOFF = 0.8
DEFAULT_MAX_PAIRS = 200_000


def check_cutoff(cutoff: Any) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff <= 1:
        raise RoutingError(
            f"routing cutoff must be in (0, 1] (the cumulative routing weight of the experts "
            f"kept per layer; the paper uses 0.8), got {cutoff!r}"
        )
    return float(cutoff)


def _unwrap(model: Any) -> Any:
    # peft wraps the transformers model; its config is the base model's
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


def routing_layout(model: Any) -> str:
    """The model's layout key in `LAYOUTS`, or RoutingError naming the supported ones."""
    m = _unwrap(model)
    config = getattr(m, "config", None)
    mtype = getattr(config, "model_type", None)
    if isinstance(mtype, str) and mtype in LAYOUTS:
        return mtype
    name = f"{type(m).__name__} (model_type {mtype!r})"
    if config is not None and any(getattr(config, k, None) for k in _MOE_CONFIG_KEYS):
        raise RoutingError(
            f"routing is not supported for the MoE layout {name}; supported layouts: {supported_layouts()}"
        )
    raise RoutingError(
        f"routing needs a mixture-of-experts model, but {name} is dense; supported layouts: {supported_layouts()}"
    )


def router_modules(model: Any) -> list[tuple[str, Any]]:
    """(module name, router module) for every MoE layer, in layer order."""
    layout = routing_layout(model)
    cls = LAYOUTS[layout].router
    found = [(n, mod) for n, mod in _unwrap(model).named_modules() if type(mod).__name__ == cls]
    if not found:
        raise RoutingError(
            f"{layout} model has no {cls} module (every layer dense?); routing needs at least one MoE layer"
        )
    return found  # named_modules walks layers in index order


def router_embeddings(model: Any) -> np.ndarray:
    """[L, E, d] float32: each MoE layer's router weight rows — the experts' embeddings in the
    residual stream, where all layers' routers read."""
    import torch

    with torch.no_grad():
        return np.stack([mod.weight.detach().float().cpu().numpy() for _, mod in router_modules(model)])


# ------------------------------------------------------------------------------------ capture


class RoutingCapture:
    """Hooks on the routers while the ``with`` block runs; none before or after.

    ``calls[l]`` holds, per forward pass, (weights [T, k], indices [T, k]) of MoE layer l, T the
    flattened batch x sequence tokens. `clear()` drops what was recorded.
    """

    def __init__(self, model: Any):
        self.routers = router_modules(model)
        self.num_experts = int(self.routers[0][1].num_experts)
        self.calls: list[list[tuple[Any, Any]]] = [[] for _ in self.routers]
        self._handles: list[Any] = []

    def __enter__(self) -> RoutingCapture:
        for layer, (_, mod) in enumerate(self.routers):
            self._handles.append(mod.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            # output = (router_logits, top-k weights, top-k indices); keep the dispatch only
            self.calls[layer].append((output[1].detach(), output[2].detach()))

        return hook

    def clear(self) -> None:
        self.calls = [[] for _ in self.routers]


def dispatch_distribution(weights: Any, indices: Any, num_experts: int) -> Any:
    """[T, E] per-token distribution over experts: the dispatched top-k weights renormalised to 1."""
    import torch

    w = weights.float()
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    out = torch.zeros(w.shape[0], num_experts, dtype=torch.float32, device=w.device)
    return out.scatter_add_(1, indices.long(), w)


def sample_routing(
    model: Any, sequences: Sequence[Sequence[int]], batch_size: int = 16, progress: bool = False
) -> np.ndarray:
    """[N, L, E] float32: per sample and MoE layer, the mean over its tokens of each token's
    dispatch distribution (`dispatch_distribution`); every row sums to 1."""
    import torch

    if not sequences:
        raise DataError("sample_routing: no sequences")
    if any(len(s) == 0 for s in sequences):
        raise DataError("sample_routing: an empty sequence has no routing; drop it")
    cap = RoutingCapture(model)
    L, E = len(cap.routers), cap.num_experts
    device = next(model.parameters()).device
    out: np.ndarray = np.empty((len(sequences), L, E), np.float32)
    order = np.argsort([len(s) for s in sequences], kind="stable")  # similar lengths batch together
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), cap:
            starts = range(0, len(order), batch_size)
            for s in progress_bar(starts, desc="routing", unit="batch", disable=not progress):
                idx = order[s : s + batch_size]
                width = max(len(sequences[i]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):  # right padding: causal attention never sees the pads
                    ids[r, : len(sequences[i])] = torch.tensor(list(sequences[i]))
                    mask[r, : len(sequences[i])] = 1
                cap.clear()
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
                m = mask.to(device).reshape(-1, 1).float()
                counts = mask.sum(1, keepdim=True).float().to(device)
                for layer in range(L):
                    ((w, ix),) = cap.calls[layer]
                    dist = dispatch_distribution(w, ix, E) * m  # padding tokens count for nothing
                    per = dist.reshape(len(idx), width, E).sum(1) / counts
                    out[idx, layer] = per.cpu().numpy()
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------------ pathways


def keep_mask(weights: np.ndarray, cutoff: float = DEFAULT_CUTOFF) -> np.ndarray:
    """[N, L, E] bool: the experts each sample keeps per layer (see `pathways`)."""
    cutoff = check_cutoff(cutoff)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 3:
        raise DataError(f"pathways: weights must be [samples, layers, experts], got shape {w.shape}")
    order = np.argsort(-w, axis=-1, kind="stable")
    sw = np.take_along_axis(w, order, -1)
    total = sw.sum(-1, keepdims=True)
    cum = np.cumsum(sw, -1)
    # how many experts: the first position where the running sum reaches the cutoff (float slack)
    n_keep = (cum < cutoff * total - 1e-9).sum(-1) + 1
    if cutoff == 1:
        n_keep = np.minimum(n_keep, (sw > 0).sum(-1).clip(min=1))
    ranked = np.arange(w.shape[-1]) < n_keep[..., None]
    mask = np.zeros(w.shape, bool)
    np.put_along_axis(mask, order, ranked, -1)
    return mask


def pathways(weights: np.ndarray, cutoff: float = DEFAULT_CUTOFF) -> list[list[np.ndarray]]:
    """Per sample, per layer: the experts (ascending id) kept up to cumulative weight ``cutoff``.

    Experts are taken in decreasing weight (ties: lower id first) until their weights sum to at
    least ``cutoff`` of the layer's total; so at least one expert per layer, and cutoff = 1 keeps
    every expert with weight > 0.
    """
    mask = keep_mask(weights, cutoff)
    return [[np.flatnonzero(layer) for layer in sample] for sample in mask]


def format_pathway(path: Sequence[Sequence[int] | np.ndarray]) -> str:
    """``"0,3|1|2,5"``: layers separated by ``|``, a layer's experts by ``,`` (the ledger form)."""
    return "|".join(",".join(str(int(e)) for e in layer) for layer in path)


def parse_pathway(text: str) -> list[list[int]]:
    try:
        return [[int(e) for e in layer.split(",")] for layer in str(text).split("|")]
    except ValueError:
        raise DataError(f"not a pathway string: {text!r} (expected e.g. '0,3|1|2,5')") from None


def pathway_symbols(path: Sequence[Sequence[int]]) -> np.ndarray:
    """The pathway as one symbol sequence; symbol = layer * 2**20 + expert (layer-tagged)."""
    return np.array([li * (1 << 20) + int(e) for li, layer in enumerate(path) for e in layer], np.int64)


# ------------------------------------------------------------------------------------ edit distance


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Unit-cost Levenshtein distance (insert, delete, substitute), the textbook DP."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


@dataclass
class PathwaySet:
    """Pathways as a padded symbol matrix, ready for batched distances.

    Attributes:
        codes: [N, Lmax] int32 symbol codes (0..S-1), padding -1.
        lengths: [N] pathway lengths.
    """

    codes: np.ndarray
    lengths: np.ndarray
    _peq: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_paths(cls, paths: Sequence[Any]) -> PathwaySet:
        """From pathways (lists of per-layer expert lists), pathway strings, or symbol arrays."""
        seqs = []
        for p in paths:
            if isinstance(p, str):
                p = parse_pathway(p)
            seqs.append(np.asarray(p, np.int64) if isinstance(p, np.ndarray) and p.ndim == 1 else pathway_symbols(p))
        n = len(seqs)
        lengths = np.array([len(s) for s in seqs], np.int64)
        codes: np.ndarray = np.full((n, int(lengths.max()) if n else 0), -1, np.int32)
        if n:
            _, inv = np.unique(np.concatenate(seqs), return_inverse=True)
            pos = 0
            for i, s in enumerate(seqs):
                codes[i, : len(s)] = inv[pos : pos + len(s)]
                pos += len(s)
        return cls(codes, lengths)

    @classmethod
    def from_weights(cls, weights: np.ndarray, cutoff: float = DEFAULT_CUTOFF) -> PathwaySet:
        """Straight from [N, L, E] routing weights (vectorised; same pathways as `pathways`)."""
        mask = keep_mask(weights, cutoff).reshape(len(weights), -1)  # (layer, expert) order = pathway order
        lengths = mask.sum(1).astype(np.int64)
        codes: np.ndarray = np.full((len(mask), int(lengths.max()) if len(mask) else 0), -1, np.int32)
        n, flat = np.nonzero(mask)
        start = np.cumsum(lengths) - lengths
        codes[n, np.arange(len(n)) - start[n]] = flat
        _, inv = np.unique(codes[codes >= 0], return_inverse=True)  # compact alphabet
        codes[codes >= 0] = inv
        return cls(codes, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, rows: Any) -> PathwaySet:
        rows = np.asarray(rows, np.int64)
        return PathwaySet(self.codes[rows], self.lengths[rows])

    @property
    def words(self) -> int:
        """64-bit words per pathway in the bit-parallel kernel (one per 64 symbols)."""
        return max(1, -(-int(self.codes.shape[1]) // 64))

    @property
    def peq(self) -> np.ndarray:
        """[N, W, S] uint64: bit i of peq[n, w, s] is set when position 64 w + i of pathway n holds
        symbol s."""
        if self._peq is None:
            n_sym = int(self.codes.max()) + 1 if self.codes.size else 0
            peq: np.ndarray = np.zeros((len(self), self.words, max(n_sym, 1)), np.uint64)
            rows = np.arange(len(self))
            for pos in range(self.codes.shape[1]):
                ok = self.codes[:, pos] >= 0
                np.bitwise_or.at(peq, (rows[ok], pos // 64, self.codes[ok, pos]), np.uint64(1) << np.uint64(pos % 64))
            self._peq = peq
        return self._peq

    def peq_bytes(self) -> int:
        n_sym = int(self.codes.max()) + 1 if self.codes.size else 1
        return len(self) * self.words * n_sym * 8

    def distances(
        self, i: Any, j: Any, chunk: int = 1 << 16, threads: int = 1, max_table_bytes: int = 1 << 30
    ) -> np.ndarray:
        """Levenshtein distance between pathways i[p] and j[p] for every pair p.

        Bit-parallel (`_myers`) with the shorter pathway of each pair as the pattern; the vectorised
        DP (`_dp`) only when the bit table would exceed ``max_table_bytes``. ``threads`` > 1 runs
        chunks in a thread pool (numpy's element-wise loops release the GIL).
        """
        i = np.asarray(i, np.int64)
        j = np.asarray(j, np.int64)
        swap = self.lengths[i] > self.lengths[j]  # distance is symmetric: pattern = the shorter
        i, j = np.where(swap, j, i), np.where(swap, i, j)
        out: np.ndarray = np.empty(len(i), np.int64)
        if len(i) == 0:
            return out
        if self.peq_bytes() <= max_table_bytes:
            _ = self.peq  # built once, before any thread needs it
            kernel = self._myers
        else:
            kernel = self._dp

        def run(s: int) -> None:
            out[s : s + chunk] = kernel(i[s : s + chunk], j[s : s + chunk])

        starts = range(0, len(i), chunk)
        if threads > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, starts))
        else:
            for s in starts:
                run(s)
        return out

    def _myers(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Myers (1999) bit-vector edit distance in Hyyro's block form (as in edlib): pathway a is the
        # pattern, 64 rows of the DP per word, b the text; one step per text symbol for every pair
        # of the batch at once. Pairs are sorted by text length so that step t touches only the
        # pairs still reading. At the end (pv, mv) hold each pair's last DP column as vertical
        # +1/-1 deltas, so D[m][n] = D[0][n] + popcount(pv) - popcount(mv) over rows 1..m. Rows
        # past m (padding bits) never reach rows <= m: carries and block outputs only flow down.
        order = np.argsort(-self.lengths[b], kind="stable")
        a, b = a[order], b[order]
        m = self.lengths[a]
        n = self.lengths[b]
        peq = self.peq
        W = int(max(1, -(-int(m.max()) // 64))) if len(m) else 1
        n_sym = peq.shape[2]
        flat = peq.reshape(-1)
        one, top = np.uint64(1), np.uint64(63)
        ones = ~np.uint64(0)
        rows_in = np.clip(m[None, :] - 64 * np.arange(W)[:, None], 0, 64).astype(np.uint64)  # [W, P]
        mask = np.where(rows_in >= 64, ones, (one << np.minimum(rows_in, 63)) - one).astype(np.uint64)
        pv = mask.copy()
        mv = np.zeros_like(pv)
        base = a * (self.words * n_sym)
        text = self.codes[b]
        live_count = np.asarray(np.searchsorted(-n, -np.arange(text.shape[1]), side="left"))  # pairs with n > t
        P_ = len(a)
        bufs: list[np.ndarray] = [np.empty(P_, np.uint64) for _ in range(5)]
        eq, xv, xh, ph, mh = bufs
        hp: np.ndarray = np.empty(P_, np.uint64)  # horizontal +1 entering the block (bit 0)
        hm: np.ndarray = np.empty(P_, np.uint64)  # horizontal -1 entering the block
        for t in range(text.shape[1]):
            k = int(live_count[t])
            if k == 0:
                break
            col = base[:k] + text[:k, t]
            hp[:k] = one  # the DP's first row grows by one per text symbol
            hm[:k] = 0
            for w in range(W):
                e, v, h, p_, q = eq[:k], xv[:k], xh[:k], ph[:k], mh[:k]
                P, M, Hp, Hm = pv[w, :k], mv[w, :k], hp[:k], hm[:k]
                np.take(flat, col + w * n_sym, out=e)
                np.bitwise_or(e, M, out=v)
                np.bitwise_or(e, Hm, out=e)  # a -1 entering the block acts as a match in row 1
                np.bitwise_and(e, P, out=h)
                np.add(h, P, out=h)
                np.bitwise_xor(h, P, out=h)
                np.bitwise_or(h, e, out=h)
                np.bitwise_or(h, P, out=p_)
                np.invert(p_, out=p_)
                np.bitwise_or(p_, M, out=p_)
                np.bitwise_and(P, h, out=q)
                if w + 1 < W:  # the horizontal delta leaving the block's last row enters the next
                    nxt_p = p_ >> top
                    nxt_m = q >> top
                np.left_shift(p_, one, out=p_)
                np.bitwise_or(p_, Hp, out=p_)
                np.left_shift(q, one, out=q)
                np.bitwise_or(q, Hm, out=q)
                np.bitwise_or(v, p_, out=P)
                np.invert(P, out=P)
                np.bitwise_or(P, q, out=P)
                np.bitwise_and(p_, v, out=M)
                if w + 1 < W:
                    Hp[:] = nxt_p
                    Hm[:] = nxt_m
        d = n + (
            np.bitwise_count(pv & mask).astype(np.int64).sum(0) - np.bitwise_count(mv & mask).astype(np.int64).sum(0)
        )
        d = np.where(m == 0, n, d)
        out = np.empty_like(d)
        out[order] = d
        return out

    def _dp(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # row-by-row DP, vectorised over pairs; the left-to-right dependency of a row,
        # D[j] = min(T[j], D[j-1] + 1), is j + cumulative-min(T[k] - k)
        A, B = self.codes[a], self.codes[b]
        m, n = self.lengths[a], self.lengths[b]
        W = B.shape[1]
        cols = np.arange(W + 1)
        prev = np.broadcast_to(cols, (len(a), W + 1)).copy()
        result = np.where(m == 0, n, 0)
        for r in range(A.shape[1]):
            sub = prev[:, :-1] + (A[:, r : r + 1] != B)
            t = np.empty_like(prev)
            t[:, 0] = prev[:, 0] + 1
            t[:, 1:] = np.minimum(prev[:, 1:] + 1, sub)
            cur = np.minimum.accumulate(t - cols, axis=1) + cols
            done = m == r + 1
            result[done] = cur[done, n[done]]
            prev = cur
        return result


@dataclass(frozen=True)
class DistanceEstimate:
    """Mean pairwise pathway edit distance.

    ``exact``: every pair was computed (``se`` = 0); otherwise ``n_pairs`` pairs drawn uniformly
    with replacement and ``se`` the standard error of their mean.
    """

    mean: float
    se: float
    n_pairs: int
    exact: bool


def pathway_distance(
    paths: Any, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0, threads: int = 1
) -> DistanceEstimate:
    """Mean Levenshtein distance over pairs of distinct samples' pathways.

    Exact over all N(N-1)/2 pairs when that is at most ``max_pairs``; otherwise ``max_pairs``
    pairs (i != j) drawn uniformly at random with the estimate's standard error.
    """
    ps = paths if isinstance(paths, PathwaySet) else PathwaySet.from_paths(paths)
    N = len(ps)
    if N < 2:
        return DistanceEstimate(math.nan, math.nan, 0, True)
    total = N * (N - 1) // 2
    if total <= max_pairs:
        total_d = 0
        for r0 in range(0, N - 1, 256):  # blocks of rows: the pair index stays small in memory
            rows = np.arange(r0, min(r0 + 256, N - 1))
            cnt: np.ndarray = N - 1 - rows
            i: np.ndarray = np.repeat(rows, cnt)
            j = np.arange(len(i)) - np.repeat(np.cumsum(cnt) - cnt, cnt) + i + 1
            total_d += int(ps.distances(i, j, threads=threads).sum())
        return DistanceEstimate(total_d / total, 0.0, int(total), True)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, N, max_pairs)
    j = (i + rng.integers(1, N, max_pairs)) % N  # uniform over j != i
    d: np.ndarray = ps.distances(i, j, threads=threads).astype(np.float64)
    return DistanceEstimate(float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), int(max_pairs), False)


def per_sample_distance(
    paths: Any, reference: Any = None, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0
) -> np.ndarray:
    """[N] each pathway's mean distance to the pathways of ``reference`` rows (default: all others).

    Exact when N x |reference| <= max_pairs; else each sample is compared with
    ``max_pairs // N`` (at least 16) reference rows drawn at random.
    """
    ps = paths if isinstance(paths, PathwaySet) else PathwaySet.from_paths(paths)
    N = len(ps)
    ref = np.arange(N) if reference is None else np.asarray(reference, np.int64)
    if N == 0 or len(ref) == 0:
        return np.full(N, np.nan)
    if N * len(ref) <= max_pairs:
        i: np.ndarray = np.repeat(np.arange(N), len(ref))
        j = np.tile(ref, N)
        d: np.ndarray = ps.distances(i, j).reshape(N, len(ref)).astype(np.float64)
        self_pair = i.reshape(N, -1) == j.reshape(N, -1)
        cnt = (~self_pair).sum(1)
        return np.where(cnt > 0, np.where(self_pair, 0, d).sum(1) / np.maximum(cnt, 1), np.nan)
    q = max(16, max_pairs // N)
    rng = np.random.default_rng(seed)
    i = np.repeat(np.arange(N), q)
    j = ref[rng.integers(0, len(ref), N * q)]
    d = ps.distances(i, j).astype(np.float64).reshape(N, q)
    keep = (i != j).reshape(N, q)
    return np.where(keep.any(1), (d * keep).sum(1) / np.maximum(keep.sum(1), 1), np.nan)


# ------------------------------------------------------------------------------------ consistency


def consistency_ci(weights: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """[N] the paper's C_i = 1 - mean_l cos(e_l, e_{l+1}) / (max_l cos + 1e-8).

    Args:
        weights: [N, L, E] per-sample routing distribution per layer.
        embeddings: [L, E, d] expert embeddings (the routers' weight rows, `router_embeddings`).

    e_{i,l} = sum_e weights[i, l, e] * embeddings[l, e]. Needs L >= 2. Where the largest cosine is
    not positive the normalisation by it is meaningless; curator divides by max_l |cos| there
    (identical to the paper's formula whenever some layer pair has cos > 0 and no cosine is more
    negative than the largest is positive).
    """
    w = np.asarray(weights, np.float64)
    emb = np.asarray(embeddings, np.float64)
    if w.ndim != 3 or emb.ndim != 3 or w.shape[1:] != emb.shape[:2]:
        raise DataError(f"consistency: weights {w.shape} and embeddings {emb.shape} must be [N, L, E] and [L, E, d]")
    if w.shape[1] < 2:
        raise DataError("pathway consistency needs at least 2 MoE layers (it compares consecutive layers)")
    e = np.einsum("nle,led->nld", w, emb)
    norm = np.linalg.norm(e, axis=-1)
    cos = (e[:, :-1] * e[:, 1:]).sum(-1) / np.maximum(norm[:, :-1] * norm[:, 1:], 1e-30)
    scale = np.maximum(cos.max(1), np.abs(cos).max(1))
    return 1.0 - cos.mean(1) / (scale + 1e-8)


def pathway_consistency(weights: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """[N] ``1 - C_i``: higher = consecutive layers route in more similar directions (steadier)."""
    return 1.0 - consistency_ci(weights, embeddings)


# ------------------------------------------------------------------------------------ memorization


def memorization_checkpoint(loss: Any, epsilon: float, delta: float) -> np.ndarray:
    """[N] 1-based checkpoint from which each sample counts as memorized; 0 = never.

    The paper's rule: from checkpoint m0 on, the sample's loss is <= epsilon and within delta of
    its loss at the final checkpoint, at every checkpoint. ``loss`` is [N, M] (checkpoints in
    training order). NaN losses never satisfy the rule.
    """
    L = np.asarray(loss, np.float64)
    if L.ndim != 2 or L.shape[1] == 0:
        raise DataError(f"memorization: loss must be [samples, checkpoints], got shape {L.shape}")
    if not epsilon > 0 or not delta >= 0:
        raise RoutingError(f"memorization rule needs epsilon > 0 and delta >= 0, got epsilon={epsilon}, delta={delta}")
    ok = (L <= epsilon) & (np.abs(L - L[:, -1:]) <= delta)
    # suffix-all: ok at m and at every later checkpoint
    tail = np.flip(np.logical_and.accumulate(np.flip(ok, 1), axis=1), 1)
    M = L.shape[1]
    first = np.where(tail.any(1), tail.argmax(1) + 1, 0)
    return np.where(tail[:, -1], first, 0).astype(np.int64) if M else first


# ------------------------------------------------------------------------------------ monitor


@dataclass(frozen=True)
class RoutingSettings:
    """How pathways are read and which samples the dataset metrics cover."""

    cutoff: float = field(
        default=DEFAULT_CUTOFF,
        metadata={"help": "Cumulative routing weight of the experts kept per layer, in (0, 1] (paper: 0.8)."},
    )
    epsilon: float = field(
        default=0.5,
        metadata={"help": "Memorization rule: loss (mean target NLL, nats) at or below this from some checkpoint on."},
    )
    delta: float = field(
        default=0.1, metadata={"help": "Memorization rule: and within this of the sample's final loss."}
    )
    memorized_only: bool = field(
        default=True,
        metadata={
            "help": "Dataset metrics over the samples memorized by the final checkpoint (the paper) or over all."
        },
    )
    max_pairs: int = field(
        default=DEFAULT_MAX_PAIRS,
        metadata={"help": "All pairs when N(N-1)/2 <= this, else this many sampled pairs (with a standard error)."},
    )
    seed: int = 0

    def __post_init__(self):
        check_cutoff(self.cutoff)
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):
            raise RoutingError(f"routing epsilon must be > 0 (a loss in nats), got {self.epsilon!r}")
        if not (isinstance(self.delta, (int, float)) and self.delta >= 0):
            raise RoutingError(f"routing delta must be >= 0, got {self.delta!r}")
        if not (isinstance(self.max_pairs, int) and self.max_pairs >= 1):
            raise RoutingError(f"routing max_pairs must be an integer >= 1, got {self.max_pairs!r}")


class RoutingMonitor:
    """Records every training example's pathway and consistency at each checkpoint.

    Use as (or inside) ``finetune(..., on_checkpoint=monitor)``; then `attach(ledger)` adds the
    ``pathway`` and ``pathway_consistency`` columns to a ledger over the same examples, or
    `columns()` gives the [N, M] arrays for ``Ledger.from_arrays(signals=...)``.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        tokenizer: Any,
        fmt: Any = None,
        *,
        cutoff: float = DEFAULT_CUTOFF,
        batch_size: int = 16,
        max_length: int = 512,
        progress: bool = False,
    ):
        self.cutoff = check_cutoff(cutoff)
        self.ids = [e.id for e in examples]
        fmt = fmt or PromptFormat()
        prompts, targets = fmt.pairs(list(examples), tokenizer)
        self.sequences = [
            (p + t)[:max_length] for p, t in (encode_pair(tokenizer, a, b) for a, b in zip(prompts, targets))
        ]
        self.batch_size, self.progress = int(batch_size), progress
        self.checkpoints: list[int] = []
        self.paths: list[list[str]] = []
        self.consistency: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []  # [N, L, E] per checkpoint, for analyses

    def check(self, model: Any) -> None:
        """Raise RoutingError now (before training) if the model cannot be monitored."""
        router_modules(model)

    def __call__(self, model: Any, info: Any) -> None:
        # every rank of a launch calls this and routes its share (curator.sampling.sharded's rule,
        # as for a checkpoint's ledger), so every rank ends with the one-process columns
        self.record(model, int(getattr(info, "index", len(self.checkpoints) + 1)), info)

    def record(self, model: Any, checkpoint: int, info: Any = None) -> None:
        """Route every example through ``model`` (eval mode, its own forward) as ``checkpoint``."""

        def route(idx: list[int]) -> np.ndarray:
            return sample_routing(model, [self.sequences[i] for i in idx], self.batch_size, self.progress)

        with measuring(model):
            w = gather_rows(len(self.sequences), route, info)
        emb = router_embeddings(model)
        self.checkpoints.append(checkpoint)
        self.weights.append(w)
        self.paths.append([format_pathway(p) for p in pathways(w, self.cutoff)])
        cons = pathway_consistency(w, emb) if w.shape[1] >= 2 else np.full(len(w), np.nan)
        self.consistency.append(cons)

    def columns(self) -> dict[str, np.ndarray]:
        """[N, M] arrays: ``pathway`` (strings) and ``pathway_consistency``."""
        if not self.checkpoints:
            raise RoutingError("the routing monitor recorded no checkpoint; pass it as on_checkpoint")
        return {"pathway": np.array(self.paths, dtype=object).T, "pathway_consistency": np.stack(self.consistency, 1)}

    def attach(self, ledger: Ledger) -> Ledger:
        """The ledger with the routing columns added (matched on example id and checkpoint)."""
        cols = self.columns()
        long = pd.DataFrame(
            {
                "example_id": np.repeat(self.ids, len(self.checkpoints)),
                "checkpoint": np.tile(self.checkpoints, len(self.ids)),
                "pathway": cols["pathway"].reshape(-1),
                "pathway_consistency": cols["pathway_consistency"].reshape(-1),
            }
        )
        df = ledger.df.drop(columns=[c for c in PATHWAY_COLUMNS if c in ledger.df.columns])
        merged = df.merge(long.astype({"example_id": "string"}), on=["example_id", "checkpoint"], how="left")
        lost = merged["pathway"].isna()
        if lost.any():
            raise DataError(
                f"{int(lost.sum())} ledger rows have no recorded routing (e.g. "
                f"{merged.loc[lost, ['example_id', 'checkpoint']].head(3).values.tolist()}); "
                "the monitor must see the same examples and checkpoints as the ledger"
            )
        merged["pathway"] = merged["pathway"].astype("string")
        meta = dict(ledger.meta, routing={**dict(ledger.meta.get("routing") or {}), "cutoff": self.cutoff})
        return Ledger(merged, meta)


# ------------------------------------------------------------------------------------ ledger metrics


def has_routing(ledger: Any) -> bool:
    df = ledger.df if hasattr(ledger, "df") else ledger
    return "pathway" in df.columns


def routing_metrics(ledger: Any, settings: RoutingSettings | None = None) -> pd.DataFrame:
    """Per checkpoint: pathway distance (mean, se, pairs, exact), pathway consistency (mean),
    and how many samples they cover (memorized ones only, unless ``memorized_only=False``).

    The memorization rule reads the ledger's ``target_nll`` as the per-sample loss.
    Raises DataError when the ledger has no ``pathway`` column.
    """
    s = settings or RoutingSettings()
    df = ledger.df if hasattr(ledger, "df") else ledger
    if "pathway" not in df.columns:
        raise DataError(
            "this ledger has no routing columns (pathway, pathway_consistency); record them "
            "with RoutingMonitor during training (`curate routing`, docs/ROUTING.md)"
        )
    ids = list(dict.fromkeys(df["example_id"].tolist()))
    cks = sorted(df["checkpoint"].unique().tolist())

    def pivot(col: str) -> pd.DataFrame:
        return df.pivot(index="example_id", columns="checkpoint", values=col).reindex(index=ids, columns=cks)

    m0 = memorization_checkpoint(pivot("target_nll").to_numpy(np.float64), s.epsilon, s.delta)
    rows = np.flatnonzero(m0 > 0) if s.memorized_only else np.arange(len(ids))
    paths = pivot("pathway")
    cons = pivot("pathway_consistency").to_numpy(np.float64) if "pathway_consistency" in df else None
    out = []
    for c, ck in enumerate(cks):
        est = (
            pathway_distance(paths.iloc[rows, c].tolist(), s.max_pairs, s.seed)
            if len(rows) >= 2
            else DistanceEstimate(math.nan, math.nan, 0, True)
        )
        out.append(
            {
                "checkpoint": int(ck),
                "pathway_distance": est.mean,
                "pathway_distance_se": est.se,
                "pathway_pairs": est.n_pairs,
                "pathway_exact": est.exact,
                "pathway_consistency": float(np.nanmean(cons[rows, c])) if cons is not None and len(rows) else math.nan,
                "n_routing_samples": int(len(rows)),
                "n_memorized": int(((m0 > 0) & (m0 <= c + 1)).sum()),
            }
        )
    return pd.DataFrame(out)


def routing_settings_from(ledger: Any, **overrides: Any) -> RoutingSettings:
    """Settings recorded in a ledger's metadata (``routing``), with overrides on top."""
    meta = getattr(ledger, "meta", {}) or {}
    rec = {k: v for k, v in dict(meta.get("routing") or {}).items() if k in RoutingSettings.__dataclass_fields__}
    rec.update({k: v for k, v in overrides.items() if v is not None})
    return RoutingSettings(**rec)


def per_example_routing(
    ledger: Any, settings: RoutingSettings | None = None, checkpoint: int | None = None
) -> pd.DataFrame:
    """Per example at one checkpoint (default the last): its mean pathway distance to the other
    memorized samples (all samples with ``memorized_only=False``), its consistency, and its
    memorization checkpoint (0 = never)."""
    s = settings or RoutingSettings()
    df = ledger.df if hasattr(ledger, "df") else ledger
    if "pathway" not in df.columns:
        raise DataError("this ledger has no routing columns; see docs/ROUTING.md")
    ids = list(dict.fromkeys(df["example_id"].tolist()))
    cks = sorted(df["checkpoint"].unique().tolist())
    ck = cks[-1] if checkpoint is None else int(checkpoint)
    loss = df.pivot(index="example_id", columns="checkpoint", values="target_nll").reindex(index=ids, columns=cks)
    m0 = memorization_checkpoint(loss.to_numpy(np.float64), s.epsilon, s.delta)
    at = df[df["checkpoint"] == ck].set_index("example_id").reindex(ids)
    ref = np.flatnonzero(m0 > 0) if s.memorized_only else None
    dist = per_sample_distance(at["pathway"].tolist(), ref, s.max_pairs, s.seed)
    cons = at["pathway_consistency"].to_numpy(np.float64) if "pathway_consistency" in at else np.full(len(ids), np.nan)
    return pd.DataFrame(
        {"example_id": ids, "pathway_distance": dist, "pathway_consistency": cons, "memorized_at": m0}
    ).set_index("example_id")
