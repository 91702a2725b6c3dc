"""The `hf` sampler: fast batched sampling and target scoring with a transformers model.

What makes it fast (compared with calling ``model.generate`` once per prompt):
  - prompts are sorted by length and decoded together in batches (left-padded, KV cache);
  - each prompt is prefilled once, then its KV cache is replicated for its n samples, so the
    prompt is never re-encoded per sample;
  - a sequence leaves the batch as soon as it emits EOS or a stop string, so finished rows stop
    costing compute;
  - only the last position's logits are computed during decoding (``logits_to_keep``).

Determinism: every sample has its own random stream, seeded from (params.seed, the prompt's token
ids, which occurrence of that prompt in the call it is, the sample's index j). So sample j of a
prompt does not depend on the other prompts in the call, on their order, on the batch size, or on
n: ``generate(ps, 3, sp)`` returns the first three of ``generate(ps, 5, sp)``'s samples. Each step
draws the token by inverse-CDF from one uniform number of that stream; the only coupling left
between rows is floating-point: padding changes logits by ~1e-6, which flips a sampled token only
when its uniform falls within that distance of a CDF boundary (about once per million steps).
On one device and dtype, the same call with the same seed gives the same output, bit for bit.
"""

from __future__ import annotations

import hashlib
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curator import models  # models.load_model: looked up when called, so it can be replaced
from curator.console import progress as progress_bar
from curator.data.format import encode_prompt, encode_scoring_pairs
from curator.errors import ConfigError, CuratorError
from curator.sampling.base import SamplingParams

# token ids that can complete a stop string, per tokenizer and set of stop-string last characters
_ENDERS: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()

# scoring keeps rows * target_len * vocab logits in memory; cap that product (float32 elements)
_MAX_SCORE_LOGITS = 2**27


@dataclass
class _Row:
    """One sequence being decoded: sample ``j`` of prompt ``prompt``."""

    prompt: int
    j: int
    tokens: list


class HFSampler:
    """Sampler protocol over a transformers causal LM (plain or peft-wrapped).

    Args:
        model: the causal LM; it is put in eval mode while sampling and restored afterwards.
        tokenizer: its tokenizer; prompts are tokenized with `encode_prompt`, pairs with `encode_pair`.
        batch_size: most sequences decoded together (prompts x samples); also the most rows scored
            together by `target_logprobs`.
        max_batch_tokens: optional cap on rows x (prompt length + max_new_tokens) per decoding batch,
            and on rows x sequence length per scoring batch (bounds KV-cache / activation memory).
        device: where inputs go; defaults to the model's device.
        progress: show a tqdm bar over samples.
    """

    accepts_counts = True  # generate() takes one sample count per prompt

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
        device: Any = None,
        progress: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"sampler batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ConfigError(f"sampler max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_batch_tokens = max_batch_tokens
        self.device = device if device is not None else next(model.parameters()).device
        self.progress = progress
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        # transformers renamed the KV-cache argument and output field `past_key_values` to `cache`
        # (5.x; the old name warns and goes in 5.40); older versions know only the old name
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.tokens_generated = 0  # running count, for benchmarks and logs

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], n: int | Sequence[int], params: SamplingParams) -> list[list[str]]:
        """``n`` completions per prompt (stop strings cut off), in prompt order.

        ``n`` may also be a sequence with one count per prompt (0 allowed).
        """
        counts = _counts(n, len(prompts))
        if not prompts:
            return []
        import torch

        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise CuratorError(
                    f"prompt {i} tokenizes to nothing and the tokenizer adds no BOS token; give a non-empty prompt"
                )
        keys = _prompt_keys(ids, params.seed)
        # work items: (prompt, its sample indices); a prompt with more samples than a batch is split
        items = []
        for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):  # longest first: OOM shows early
            for s in range(0, counts[i], self.batch_size):
                items.append((i, list(range(s, min(counts[i], s + self.batch_size)))))
        out: list[list[str]] = [[""] * c for c in counts]
        bar = None
        if self.progress:
            bar = progress_bar(total=sum(counts), desc="sampling", unit="sample", leave=False)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for batch in self._decode_batches(items, ids, params.max_new_tokens):
                    for row, text in self._generate_batch(batch, ids, keys, params):
                        out[row.prompt][row.j] = text
                    if bar is not None:
                        bar.update(sum(len(js) for _, js in batch))
        finally:
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        return out

    def _decode_batches(self, items, ids, max_new: int):
        batch: list[Any] = []
        rows = longest = 0
        for item in items:
            r, ln = len(item[1]), len(ids[item[0]])
            over_rows = rows + r > self.batch_size
            over_tokens = (
                self.max_batch_tokens is not None and (rows + r) * (max(longest, ln) + max_new) > self.max_batch_tokens
            )
            if batch and (over_rows or over_tokens):
                yield batch
                batch, rows, longest = [], 0, 0
            batch.append(item)
            rows += r
            longest = max(longest, ln)
        if batch:
            yield batch

    def _forward(self, input_ids, mask, position_ids, cache, keep: int | None):
        kw = {self._keep_kw: keep} if (self._keep_kw and keep is not None) else {}
        kw[self._cache_kw] = cache
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **kw)

    def _generate_batch(self, batch, ids, keys, params: SamplingParams):
        import torch
        from transformers import DynamicCache

        dev = self.device
        prompt_ids = [ids[i] for i, _ in batch]
        input_ids, mask = _left_pad(prompt_ids, self.pad_id, dev)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # prefill once per prompt ...
        try:  # the config tells the cache about sliding-window layers (transformers >= 4.56)
            cache = DynamicCache(config=self.model.config)
        except TypeError:
            cache = DynamicCache()
        res = self._forward(input_ids, mask, position_ids, cache, keep=1)
        cache = getattr(res, self._cache_kw)
        # ... then give every sample its own copy of the prompt's KV cache
        src = torch.tensor([k for k, (_, js) in enumerate(batch) for _ in js], device=dev)
        cache.batch_select_indices(src)
        logits = res.logits[:, -1, :].float()[src]
        mask = mask[src]
        pos = mask.sum(-1, keepdim=True)  # position of the next token = number of real tokens so far
        rows = [_Row(i, j, []) for i, js in batch for j in js]
        greedy = params.temperature == 0
        max_new = params.max_new_tokens
        u = None if greedy else torch.stack([_uniforms(keys[r.prompt], r.j, max_new) for r in rows]).to(dev)
        stops = tuple(s for s in params.stop if s)
        window = max((len(s) for s in stops), default=0) + 4  # tokens of tail text to search for a stop
        enders = self._stop_enders(stops)
        active = list(range(len(rows)))  # rows[active[b]] is batch row b
        done: list[tuple[_Row, str]] = []
        for t in range(max_new):
            tok = _choose(logits, None if u is None else u[:, t], params.temperature, params.top_p)
            keep_b = []
            for b, token in enumerate(tok.tolist()):
                row = rows[active[b]]
                finished = token in self.eos_ids
                if not finished:
                    row.tokens.append(token)
                    # decode the tail only when this token could complete a stop string
                    if stops and token in enders:
                        tail = self.tokenizer.decode(row.tokens[-window:], skip_special_tokens=True)
                        finished = any(s in tail for s in stops)
                if finished or t == max_new - 1:
                    done.append((row, self._text(row.tokens, stops)))
                else:
                    keep_b.append(b)
            self.tokens_generated += len(active)
            if not keep_b:
                break
            if len(keep_b) < len(active):
                # drop finished rows: every later step then costs only the live ones
                sel = torch.tensor(keep_b, device=dev)
                cache.batch_select_indices(sel)
                mask, pos, tok = mask[sel], pos[sel], tok[sel]
                if u is not None:
                    u = u[sel]
                active = [active[b] for b in keep_b]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=-1)
            res = self._forward(tok.unsqueeze(-1), mask, pos, cache, keep=1)
            cache = getattr(res, self._cache_kw)
            logits = res.logits[:, -1, :].float()
            pos = pos + 1
        return done

    def _stop_enders(self, stops: tuple[str, ...]) -> frozenset:
        """Token ids after which a stop string can newly appear in the text.

        A stop string can only complete on a token whose text holds its last character, or on a
        token that decodes to nothing or to a partial character (byte-level pieces). Checking the
        tail text only after those tokens saves a detokenization per sequence per step.
        """
        if not stops:
            return frozenset()
        key = frozenset(s[-1] for s in stops)
        try:  # cached per tokenizer for the process: a sampler per checkpoint must not redo it
            per_tok = _ENDERS.setdefault(self.tokenizer, {})
        except TypeError:
            per_tok = {}
        if key not in per_tok:
            vocab = len(self.tokenizer)
            pieces = self.tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=True)
            per_tok[key] = frozenset(
                i for i, t in enumerate(pieces) if not t or "\ufffd" in t or any(c in t for c in key)
            )
        return per_tok[key]

    def _text(self, tokens: list, stops: tuple[str, ...]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return cut_at_stop(text, stops)

    # ------------------------------------------------------------------ scoring
    def target_logprobs(self, prompts: Sequence[str], targets: Sequence[str]) -> list[np.ndarray]:
        """Log-probability of every target token given its prompt and the earlier target tokens.

        Pairs are tokenized with `encode_pair` (the training tokenization); array i has one float
        per target token, the first one included.
        """
        pairs = encode_scoring_pairs(self.tokenizer, prompts, targets)
        if not pairs:
            return []
        import torch

        vocab = self._vocab_size()
        token_cap = self.max_batch_tokens or 16384
        # a padded token costs as much as a real one on a CPU, so batches there hold rows of nearly
        # equal length; a GPU has idle capacity at small batches and tolerates more padding
        pad_tolerance = 0.1 if str(self.device).startswith("cpu") else 0.5
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(pairs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                start = 0
                while start < len(order):
                    # grow the batch while rows, tokens and kept logits stay under their caps
                    end, longest, longest_t, real = start, 0, 0, 0
                    while end < len(order):
                        p, t = pairs[order[end]]
                        L, T = max(longest, len(p) + len(t)), max(longest_t, len(t))
                        rows = end - start + 1
                        if end > start and (
                            rows > self.batch_size
                            or rows * L > token_cap
                            or rows * (T + 1) * vocab > _MAX_SCORE_LOGITS
                            or rows * L > (1 + pad_tolerance) * (real + len(p) + len(t))
                        ):
                            break
                        longest, longest_t, real, end = L, T, real + len(p) + len(t), end + 1
                    idx = order[start:end]
                    for i, lp in zip(idx, self._score_batch([pairs[i] for i in idx])):
                        out[i] = lp
                    start = end
        finally:
            self.model.train(was_training)
        return out

    def _score_batch(self, pairs) -> list[np.ndarray]:
        import torch

        dev = self.device
        full = [p + t for p, t in pairs]
        # left padding puts every target at the right edge, so the last (max_t + 1) positions hold
        # every logit any target needs and the rest of the vocabulary projection is skipped
        input_ids, mask = _left_pad(full, self.pad_id, dev)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        max_t = max(len(t) for _, t in pairs)
        if max_t == 0:
            return [np.zeros(0, dtype=np.float32) for _ in pairs]
        kw = {self._keep_kw: max_t + 1} if self._keep_kw else {}
        logits = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **kw
        ).logits
        logits = logits[:, -(max_t + 1) : -1, :].float()  # position k predicts token k + 1
        tgt = input_ids[:, -max_t:]
        lp = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        lp = lp.cpu().numpy()
        return [
            lp[b, max_t - len(t) :].astype(np.float32) if len(t) else np.zeros(0, dtype=np.float32)
            for b, (_, t) in enumerate(pairs)
        ]

    def target_nll(self, prompts: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean negative log-likelihood per target token, number of target tokens) per pair.

        A target with no tokens has NaN mean NLL. Perplexity is ``exp(mean_nll)``.
        """
        lps = self.target_logprobs(prompts, targets)
        n_tok = np.array([len(lp) for lp in lps], dtype=np.int64)
        nll = np.array([-float(np.mean(lp, dtype=np.float64)) if len(lp) else np.nan for lp in lps])
        return nll, n_tok

    def _vocab_size(self) -> int:
        emb = self.model.get_output_embeddings()
        return int(emb.weight.shape[0]) if emb is not None else int(self.model.config.vocab_size)

    @classmethod
    def from_loaded(cls, loaded: Any, **kw: Any) -> HFSampler:
        """From a `LoadedModel` or a `load_model` spec."""
        if isinstance(loaded, (str, bytes)) or hasattr(loaded, "__fspath__"):
            loaded = models.load_model(loaded)
        kw.setdefault("device", loaded.device)
        return cls(loaded.model, loaded.tokenizer, **kw)


# ---------------------------------------------------------------------- helpers
def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (which is dropped)."""
    cut = len(text)
    for s in stops:
        if s:
            k = text.find(s)
            if 0 <= k < cut:
                cut = k
    return text[:cut]


def _counts(n: int | Sequence[int], n_prompts: int) -> list[int]:
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        if n < 1:
            raise ConfigError(f"samples per prompt (n) must be >= 1, got {n}")
        return [int(n)] * n_prompts
    if isinstance(n, bool):
        raise ConfigError(f"samples per prompt (n) must be an integer >= 1 or one count per prompt, got {n!r}")
    counts = [int(c) for c in n]
    if len(counts) != n_prompts:
        raise ConfigError(f"n has {len(counts)} counts for {n_prompts} prompts; give one per prompt")
    if any(c < 0 for c in counts):
        raise ConfigError("per-prompt sample counts must be >= 0")
    return counts


def _eos_ids(model: Any, tokenizer: Any) -> set:
    ids = set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in ([gen] if isinstance(gen, int) else list(gen or [])) + [tokenizer.eos_token_id]:
        if v is not None:
            ids.add(int(v))
    return ids


def _left_pad(seqs: list, pad_id: int, device: Any):
    import torch

    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            input_ids[b, L - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[b, L - len(s) :] = 1
    return input_ids.to(device), mask.to(device)


def _prompt_keys(ids: list, seed: int) -> list[bytes]:
    """A key per prompt from (seed, its token ids, which repeat of that prompt it is)."""
    seen: dict[bytes, int] = {}
    keys = []
    for p in ids:
        h = hashlib.sha256(np.asarray(p, dtype=np.int64).tobytes()).digest()
        occ = seen.get(h, 0)
        seen[h] = occ + 1
        keys.append(hashlib.sha256(b"%d|%d|" % (int(seed), occ) + h).digest())
    return keys


def _uniforms(key: bytes, j: int, steps: int):
    """The uniform numbers that drive sample ``j`` of the prompt with ``key``, one per step."""
    import torch

    s = int.from_bytes(hashlib.sha256(key + b"|%d" % j).digest()[:8], "little") & ((1 << 63) - 1)
    g = torch.Generator().manual_seed(s)
    return torch.rand(steps, generator=g, dtype=torch.float64)


def _choose(logits, u, temperature: float, top_p: float, prefix: int = 128):
    """Greedy (temperature 0) or temperature + nucleus sampling by inverse CDF with uniforms ``u``.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p`` (the top
    token always included), renormalised; token k of it is drawn when ``u`` falls in its CDF slot.
    """
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        # no truncation: the CDF in vocabulary order needs no sort
        return _inverse_cdf(probs, None, probs > 0, u)
    # sorting the whole vocabulary every step is the slowest part of sampling on CPU; the nucleus
    # nearly always lies within the top `prefix` tokens, which topk finds much faster
    k = min(prefix, probs.shape[-1])
    sp, si = probs.topk(k, dim=-1)
    inside = sp.sum(-1) >= top_p
    if not bool(inside.all()):
        full_sp, full_si = probs[~inside].sort(dim=-1, descending=True)
        picked = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        picked[~inside] = _inverse_cdf(full_sp, full_si, _nucleus(full_sp, top_p), u[~inside])
        if bool(inside.any()):
            picked[inside] = _inverse_cdf(sp[inside], si[inside], _nucleus(sp[inside], top_p), u[inside])
        return picked
    return _inverse_cdf(sp, si, _nucleus(sp, top_p), u)


def _nucleus(sorted_probs, top_p: float):
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p  # mass before this token < top_p
    keep[:, 0] = True
    return keep


def _inverse_cdf(probs, index, keep, u):
    """Token whose slot in the CDF of ``probs * keep`` (renormalised) contains ``u``."""
    import torch

    cs = (probs * keep).double().cumsum(-1)
    r = (u * cs[:, -1]).unsqueeze(-1)
    k = torch.searchsorted(cs, r, right=True).squeeze(-1)
    # guard the float edge u * total == total: never step past the last kept token
    last = keep.shape[-1] - 1 - keep.flip(-1).long().argmax(-1)
    k = torch.minimum(k, last)
    return k if index is None else index.gather(-1, k.unsqueeze(-1)).squeeze(-1)
