"""`embedding-diversity`: k-center greedy (farthest-point traversal) over candidate embeddings.

The training set's embeddings start as already-covered centers, so picks go to what the training
set does not cover. Each pick is the candidate farthest from every center so far.

Scale (1M x 384 candidates, 10k picks): applying every new center to every candidate is
O(N k d) ≈ 4e12 flops. We keep instead an *upper bound* on each candidate's squared distance to
its nearest center (distances only shrink as centers are added, so a bound computed against
older centers stays valid) and bring only a small "front" of the highest bounds up to date. A
front candidate is picked once its exact distance is at least (1 - eps) times every bound outside
the front — eps=0 is exact greedy; the default 0.05 makes each pick within 5% of the farthest
(a 2/(1-eps) k-center approximation instead of 2) and lets long runs of picks skip refreshes.
"""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext, Strategy, check_param

_CHUNK = 65536


def min_sq_dist(X: np.ndarray, C: np.ndarray, chunk: int = _CHUNK, progress: bool = False) -> np.ndarray:
    """Squared L2 distance from each row of X to its nearest row of C (FAISS brute force)."""
    import faiss

    from curator.console import progress as progress_bar  # lazy: pulls in tqdm

    out: np.ndarray = np.empty(len(X), np.float32)
    if len(C) == 0:
        out[:] = np.inf
        return out
    C = np.ascontiguousarray(C, dtype=np.float32)
    starts = range(0, len(X), chunk)
    for s in progress_bar(starts, desc="distances to covered set", unit="chunk", disable=not progress):
        D, _ = faiss.knn(np.ascontiguousarray(X[s : s + chunk], dtype=np.float32), C, 1)
        out[s : s + chunk] = np.maximum(D[:, 0], 0)
    return out


def kcenter_greedy(
    X: np.ndarray,
    k: int,
    centers: np.ndarray | None = None,
    *,
    eps: float = 0.05,
    front: int = 4096,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-point traversal of ``X`` starting from ``centers`` (already covered).

    Args:
        X: [N, d] candidates. centers: [m, d] already-covered points (may be None or empty).
        k: picks wanted (at most N).
        eps: slack per pick (0 = exact greedy).
        front: candidates kept exactly up to date between refreshes.
        rng: picks the first center when there are no initial centers.

    Returns:
        (picked row indices in pick order, per-row score) where the score of a picked row is its
        distance to the covered set when it was picked, and of any other row an upper bound on
        its distance to the final covered set.
    """
    X = np.asarray(X, dtype=np.float32)
    N = len(X)
    k = min(int(k), N)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(N)
    C0 = np.zeros((0, X.shape[1]), np.float32) if centers is None else np.asarray(centers, np.float32)
    m0 = len(C0)
    C = np.empty((m0 + k, X.shape[1]), np.float32)
    C[:m0] = C0
    nC = m0
    picks: np.ndarray = np.empty(k, np.int64)
    pick_d: np.ndarray = np.empty(k, np.float64)
    n_picked = 0
    if m0 == 0:
        first = int((rng or np.random.default_rng(0)).integers(N))
        picks[0], pick_d[0] = first, np.inf
        C[0] = X[first]
        nC, n_picked = 1, 1
    ub = min_sq_dist(X, C[:nC], progress=N * nC > 5e8)  # the one full pass
    applied: np.ndarray = np.full(N, nC, np.int64)  # centers C[:applied[i]] are included in ub[i]
    if n_picked:
        ub[picks[0]] = -1.0
    slack = (1.0 - float(eps)) ** 2
    M = min(int(front), N)
    F = None
    while n_picked < k:
        if F is None:
            if M < N:
                part = np.argpartition(-ub, M)
                F, rest_max = part[:M], float(ub[part[M]])
            else:
                F, rest_max = np.arange(N), -np.inf
            stale = F[applied[F] < nC]
            # apply to each stale row only the centers added since it was last brought up to date
            # (rows refreshed together share that count, so there are few groups)
            for a in np.unique(applied[stale]):
                rows = stale[applied[stale] == a]
                ub[rows] = np.minimum(ub[rows], min_sq_dist(X[rows], C[a:nC]))
            applied[stale] = nC
            XF = X[F]
            sqF = np.einsum("ij,ij->i", XF, XF)
            dF = ub[F]
        j = int(np.argmax(dF))
        if dF[j] < 0 or (dF[j] < slack * rest_max):
            if dF[j] < 0 and rest_max < 0:
                break  # everything picked
            F = None  # the front no longer holds a (near-)farthest candidate: refresh
            continue
        i = int(F[j])
        picks[n_picked], pick_d[n_picked] = i, np.sqrt(max(float(dF[j]), 0.0))
        n_picked += 1
        c = X[i]
        C[nC] = c
        nC += 1
        # the new center only shrinks distances; bring the front up to date with it
        # a small matrix-vector product per pick: single-threaded einsum, because a BLAS thread
        # pool woken 10,000 times costs more than the product itself on a busy machine
        d2 = sqF - 2.0 * np.einsum("ij,j->i", XF, c) + float(np.einsum("i,i->", c, c))
        np.minimum(dF, np.maximum(d2, 0.0), out=dF)
        dF[j] = -1.0
        ub[F] = dF
        applied[F] = nC
    picks, pick_d = picks[:n_picked], pick_d[:n_picked]
    scores = np.sqrt(np.maximum(ub, 0)).astype(np.float64)
    scores[picks] = pick_d
    return picks, scores


class KCenterDiversity(Strategy):
    """Farthest-point picks over embeddings, starting from what the training set covers."""

    name = "embedding-diversity"
    needs = frozenset({"embeddings"})
    description = (
        "k-center greedy (farthest point, FAISS) over candidate embeddings; covers what the training set does not"
    )

    def __init__(self, eps: float = 0.05, cover_train: bool = True, front: int = 4096):
        check_param(self.name, "eps", eps, 0 <= eps < 1, "in [0, 1) (0 = exact greedy)")
        check_param(self.name, "front", front, isinstance(front, int) and front >= 1, "an integer >= 1")
        self.eps, self.cover_train, self.front = float(eps), bool(cover_train), int(front)

    def select(self, ctx: SelectionContext, k: int) -> list[str]:
        ids = ctx.ids
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        X = ctx.signals.embeddings(ctx.pool)
        T = ctx.signals.embeddings(ctx.train) if self.cover_train and ctx.train else None
        picks, scores = kcenter_greedy(X, k, T, eps=self.eps, front=self.front, rng=ctx.rng)
        ctx.record_scores(ids, scores)
        return [ids[i] for i in picks]
