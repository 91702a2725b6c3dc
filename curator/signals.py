"""Per-example signals strategies ask for — embeddings, target losses, sampled answers.

Computed only when a strategy asks (strategies declare ``needs``; the loop never branches on the
strategy), batched, and cached per (signal, model key, example id). The model key is a fingerprint
of the model's weights (or a key the caller gives, e.g. ``"run-a/round-2"``), so strategies that
share a ``SignalCache`` in one comparison never embed the same pool twice under the same model,
and a model finetuned in a later round never reuses a stale entry. ``stats`` counts what was
computed vs served from cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curator.data.example import Example
from curator.data.format import PromptFormat, encode_prompt
from curator.errors import CuratorError, StrategyError, require
from curator.sampling.base import SamplingParams

KINDS = ("embeddings", "losses", "answers")


class _Table:
    """Rows of one signal under one model key: id -> (block, row) over appended blocks."""

    def __init__(self):
        self.blocks: list[Any] = []
        self.block_ids: list[list[str]] = []
        self.where: dict[str, tuple[int, int]] = {}

    def missing(self, ids: Sequence[str]) -> list[int]:
        w = self.where
        return [i for i, x in enumerate(ids) if x not in w]

    def put(self, ids: Sequence[str], values: Any) -> None:
        b = len(self.blocks)
        self.blocks.append(values)
        self.block_ids.append(list(ids))
        self.where.update((x, (b, r)) for r, x in enumerate(ids))

    def get_array(self, ids: Sequence[str]) -> np.ndarray:
        if not ids:
            first = self.blocks[0] if self.blocks else np.zeros((0,), np.float32)
            return np.zeros((0,) + np.shape(first)[1:], dtype=np.asarray(first).dtype)
        b0, r0 = self.where[ids[0]]
        if self.block_ids[b0][r0 : r0 + len(ids)] == list(ids):
            # the common case (the pool asked for in the order it was stored): a view, no copy —
            # a 1M x 384 float32 pool is 1.5 GB
            view = self.blocks[b0][r0 : r0 + len(ids)]
            view.flags.writeable = False
            return view
        loc = np.array([self.where[x] for x in ids], dtype=np.int64)
        out = np.empty((len(ids),) + self.blocks[b0].shape[1:], dtype=self.blocks[b0].dtype)
        for b in np.unique(loc[:, 0]):
            sel = loc[:, 0] == b
            out[sel] = self.blocks[b][loc[sel, 1]]
        return out

    def get_list(self, ids: Sequence[str]) -> list[Any]:
        return [self.blocks[b][r] for b, r in (self.where[x] for x in ids)]


class SignalCache:
    """Signals shared across strategies (and rounds) of one process, keyed by model key."""

    def __init__(self):
        self._tables: dict[tuple[str, str], _Table] = {}

    def table(self, kind: str, key: str) -> _Table:
        return self._tables.setdefault((kind, key), _Table())

    def clear(self) -> None:
        self._tables.clear()


def model_fingerprint(model: Any) -> str:
    """A short hash of a torch model's weights (names, shapes, sums and a strided sample).

    Cheap enough to take every round (one read of the weights) and changes whenever finetuning
    changes any parameter, LoRA adapters included.
    """
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = p.detach().reshape(-1).float()
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            stride = max(1, t.numel() // 64)
            stats = torch.stack([t.sum(), (t * t).sum()]).cpu().numpy()
            h.update(stats.astype(np.float64).tobytes())
            h.update(t[::stride].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Signals:
    """Embeddings, mean target NLLs and sampled answers for Examples, on demand and cached.

    Args:
        model, tokenizer: the current (finetuned) model; embeddings default to its mean-pooled last
            hidden states over the prompt.
        sampler: a Sampler over the same model (``target_logprobs`` for losses, ``generate`` for
            answers).
        grader: extracts final answers from sampled completions.
        fmt: the PromptFormat (prompt/target text); default the paper's.
        sampling: SamplingParams for ``answers``; n_answers: samples per candidate by default.
        encoder: ``"model"`` (default) or a sentence-transformers model name or directory
            (needs ``pip install 'premem-curator[st]'``).
        embed_fn: any ``list[Example] -> [n, d] array`` to use instead (a custom encoder).
        key: the model key for the cache (default: a fingerprint of the model's weights).
        cache: a SignalCache to share between Signals objects (default: a private one).
        batch_size: examples per forward pass when embedding.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        sampler: Any = None,
        grader: Any = None,
        fmt: Any = None,
        *,
        sampling: Any = None,
        n_answers: int = 5,
        encoder: str = "model",
        embed_fn: Callable[[list[Example]], Any] | None = None,
        key: str | None = None,
        cache: SignalCache | None = None,
        batch_size: int = 16,
        max_length: int = 512,
    ):
        self.model, self.tokenizer, self.sampler, self.grader = model, tokenizer, sampler, grader
        if fmt is None:
            fmt = PromptFormat()
        self.fmt = fmt
        self.sampling = sampling
        self.n_answers = int(n_answers)
        self.encoder = encoder
        self.embed_fn = embed_fn
        self._key = key
        self._fingerprint: str | None = None
        self.cache = cache if cache is not None else SignalCache()
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self._st_model: Any = None
        self.stats = {k: {"computed": 0, "cached": 0} for k in KINDS}

    # -- keys ---------------------------------------------------------------------------------
    def model_key(self) -> str:
        if self._key is not None:
            return self._key
        if self._fingerprint is None:
            m = self.model if self.model is not None else getattr(self.sampler, "model", None)
            self._fingerprint = model_fingerprint(m) if m is not None else f"object-{id(self.sampler)}"
        return self._fingerprint

    def _embed_key(self) -> str:
        if self.embed_fn is not None:
            return "fn:" + (self._key or f"{id(self.embed_fn)}")
        if self.encoder != "model":
            return "st:" + self.encoder  # a frozen encoder: valid across rounds and models
        return "model:" + self.model_key()

    # -- public signals -----------------------------------------------------------------------
    def embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        """[n, d] float32, L2-normalised, one row per example (a read-only view when cached)."""
        table = self.cache.table("embeddings", self._embed_key())
        ids = [e.id for e in examples]
        todo = _unique(examples, table.missing(ids))
        self._count("embeddings", len(ids), len(todo))
        if todo:
            vecs = np.asarray(self._compute_embeddings(todo), dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(todo):
                raise CuratorError(
                    f"the embedding encoder returned shape {vecs.shape} for "
                    f"{len(todo)} examples; expected [{len(todo)}, d]"
                )
            table.put([e.id for e in todo], _l2_normalise(vecs))
        return table.get_array(ids)

    def losses(self, examples: Sequence[Example], given_question: bool = True) -> np.ndarray:
        """[n] float64 mean per-token NLL of each example's target under the current model.

        ``given_question=False`` scores the same target tokens after the prompt template with the
        question left empty (``"\nAnswer:"`` for the default template): the "direct answer score"
        s(A) of instruction-following difficulty (Li et al. 2023), whose reference code likewise
        keeps the template's response marker and drops only the instruction.
        """
        key = self.model_key() if given_question else self.model_key() + "|no-question"
        table = self.cache.table("losses", key)
        ids = [e.id for e in examples]
        todo = _unique(examples, table.missing(ids))
        self._count("losses", len(ids), len(todo))
        if todo:
            if self.sampler is None:
                raise CuratorError("losses need a sampler (target_logprobs); build Signals with sampler=...")
            scored = todo if given_question else [dataclasses.replace(e, question="") for e in todo]
            prompts, targets = self.fmt.pairs(scored, self.tokenizer)
            lps = self.sampler.target_logprobs(prompts, targets)
            # an empty target has no loss; NaN lets the strategy decide (never silently 0)
            nll = np.array([-float(np.mean(lp)) if len(lp) else np.nan for lp in lps])
            table.put([e.id for e in todo], nll)
        return table.get_array(ids).astype(np.float64)

    def answers(self, examples: Sequence[Example], n: int | None = None) -> list[list[str | None]]:
        """n sampled completions per example, reduced to extracted final answers (None = no answer)."""
        n = self.n_answers if n is None else int(n)
        params = self._sampling_params()
        table = self.cache.table("answers", f"{self.model_key()}|n={n}|{params!r}")
        ids = [e.id for e in examples]
        todo = _unique(examples, table.missing(ids))
        self._count("answers", len(ids), len(todo))
        if todo:
            if self.sampler is None or self.grader is None:
                raise CuratorError("answers need a sampler and a grader; build Signals with sampler=... and grader=...")
            prompts = [self.fmt.prompt_text(e, self.tokenizer) for e in todo]
            outs = self.sampler.generate(prompts, n, params)
            table.put([e.id for e in todo], [[self.grader.extract(c) for c in cs] for cs in outs])
        return table.get_list(ids)

    def put(self, kind: str, examples_or_ids: Sequence[Any], values: Any) -> None:
        """Store precomputed signals (imported embeddings, a benchmark's arrays) in the cache."""
        if kind not in KINDS:
            raise CuratorError(f"unknown signal {kind!r}; one of {', '.join(KINDS)}")
        ids = [x.id if isinstance(x, Example) else str(x) for x in examples_or_ids]
        if len(ids) != len(values):
            raise CuratorError(f"put({kind!r}): {len(ids)} ids but {len(values)} values")
        if kind == "embeddings":
            self.cache.table(kind, self._embed_key()).put(ids, _l2_normalise(np.asarray(values, np.float32)))
        elif kind == "losses":
            self.cache.table(kind, self.model_key()).put(ids, np.asarray(values, np.float64))
        else:
            n = len(values[0]) if len(values) else self.n_answers
            key = f"{self.model_key()}|n={n}|{self._sampling_params()!r}"
            self.cache.table(kind, key).put(ids, [list(v) for v in values])

    def restricted(self, needs: frozenset[str], strategy: str) -> RestrictedSignals:
        return RestrictedSignals(self, needs, strategy)

    # -- computing ----------------------------------------------------------------------------
    def _count(self, kind: str, asked: int, computed: int) -> None:
        self.stats[kind]["computed"] += computed
        self.stats[kind]["cached"] += asked - computed

    def _sampling_params(self) -> Any:
        if self.sampling is None:
            self.sampling = SamplingParams()
        return self.sampling

    def _compute_embeddings(self, examples: list[Example]) -> Any:
        if self.embed_fn is not None:
            return self.embed_fn(examples)
        texts = [self.fmt.prompt_text(e, self.tokenizer) for e in examples]
        if self.encoder != "model":
            return self._st_encode(texts)
        if self.model is None or self.tokenizer is None:
            raise CuratorError(
                "embeddings need the model and tokenizer (encoder='model'); build "
                "Signals with model=..., tokenizer=..., or set a sentence-transformers encoder"
            )
        return mean_pooled_hidden_states(self.model, self.tokenizer, texts, self.batch_size, self.max_length)

    def _st_encode(self, texts: list[str]) -> np.ndarray:
        if self._st_model is None:
            st = require("sentence_transformers", "st", f"the sentence-transformers encoder {self.encoder!r}")
            self._st_model = st.SentenceTransformer(self.encoder, device="cpu")
        return self._st_model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 1000,
        )


class RestrictedSignals:
    """The Signals a strategy sees: only the signals it declared in ``needs``."""

    def __init__(self, signals: Signals, needs: frozenset[str], strategy: str):
        self._signals, self._needs, self._strategy = signals, frozenset(needs), strategy

    def _check(self, kind: str) -> Signals:
        if kind not in self._needs:
            raise StrategyError(
                f"strategy {self._strategy!r} asked for {kind} but does not declare "
                f"{kind!r} in its needs ({sorted(self._needs) or 'none'}); add it to `needs`"
            )
        return self._signals

    def embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        return self._check("embeddings").embeddings(examples)

    def losses(self, examples: Sequence[Example], given_question: bool = True) -> np.ndarray:
        return self._check("losses").losses(examples, given_question)

    def answers(self, examples: Sequence[Example], n: int | None = None) -> list[list[str | None]]:
        return self._check("answers").answers(examples, n)

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return self._signals.stats


def mean_pooled_hidden_states(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16, max_length: int = 512
) -> np.ndarray:
    """[n, hidden] float32: last-layer hidden states averaged over each prompt's real tokens."""
    import torch

    from curator.console import progress  # lazy: pulls in tqdm

    ids = [encode_prompt(tokenizer, t)[:max_length] or [tokenizer.eos_token_id or 0] for t in texts]
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths batch together
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    try:
        with torch.no_grad():
            starts = range(0, len(ids), batch_size)
            for s in progress(starts, desc="embedding", unit="batch", disable=len(starts) < 20):
                idx = order[s : s + batch_size]
                L = max(len(ids[i]) for i in idx)
                inp = torch.zeros((len(idx), L), dtype=torch.long)
                mask = torch.zeros((len(idx), L), dtype=torch.long)
                for r, i in enumerate(idx):  # right padding: causal attention never sees the pads
                    inp[r, : len(ids[i])] = torch.tensor(ids[i])
                    mask[r, : len(ids[i])] = 1
                inp, mask = inp.to(device), mask.to(device)
                hs = model(input_ids=inp, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
                m = mask.unsqueeze(-1).to(hs.dtype)
                pooled = ((hs * m).sum(1) / m.sum(1)).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(ids), pooled.shape[1]), np.float32)
                out[idx] = pooled
    finally:
        model.train(was_training)
    return out if out is not None else np.zeros((0, 0), np.float32)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise CuratorError(f"embeddings must be a 2-d [n, d] array, got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no [n, d] temporary
    if np.all(np.abs(norms - 1) < 1e-4):
        return x  # already unit length: keep the caller's array (no 1.5 GB copy)
    return x / np.maximum(norms, 1e-12)


def _unique(examples: Sequence[Example], positions: list[int]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for i in positions:
        e = examples[i]
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out
