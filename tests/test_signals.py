"""Signals: computed on demand, batched, cached per model key — never twice for the same pool."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from curator.data.example import Example
from curator.errors import CuratorError, MissingExtraError
from curator.signals import SignalCache, Signals, model_fingerprint


def ex(i: str, q: str | None = None) -> Example:
    return Example(id=i, question=q or f"What is {i}?", solution=f"It is {i}.\n#### 1", answer="1")


class CountingEncoder:
    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, examples):
        self.seen.extend(e.id for e in examples)
        return np.stack([np.arange(1, 4, dtype=np.float32) * (1 + int(e.id[1:])) for e in examples])


def test_embeddings_are_computed_once_and_served_from_cache():
    enc = CountingEncoder()
    sig = Signals(embed_fn=enc, key="m0")
    a = sig.embeddings([ex("c0"), ex("c1")])
    b = sig.embeddings([ex("c1"), ex("c2"), ex("c2")])
    assert enc.seen == ["c0", "c1", "c2"]  # c1 from cache, c2 once despite the repeat
    assert sig.stats["embeddings"] == {"computed": 3, "cached": 2}
    unit = np.arange(1, 4) / np.linalg.norm(np.arange(1, 4))
    np.testing.assert_allclose(a, [unit, unit], rtol=1e-6)  # L2-normalised
    np.testing.assert_allclose(b[0], a[1])
    assert a.dtype == np.float32


def test_two_strategies_sharing_a_cache_embed_the_pool_once():
    enc = CountingEncoder()
    cache = SignalCache()
    pool = [ex(f"c{i}") for i in range(10)]
    first = Signals(embed_fn=enc, key="round-0", cache=cache)
    second = Signals(embed_fn=enc, key="round-0", cache=cache)
    first.embeddings(pool)
    second.embeddings(pool)
    assert len(enc.seen) == 10
    assert second.stats["embeddings"] == {"computed": 0, "cached": 10}
    # a different model key (the next round's model) computes afresh
    Signals(embed_fn=enc, key="round-1", cache=cache).embeddings(pool)
    assert len(enc.seen) == 20


def test_cached_pool_is_returned_without_copy():
    sig = Signals(key="m")
    X = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    pool = [ex(f"c{i}") for i in range(100)]
    sig.put("embeddings", pool, X)
    got = sig.embeddings(pool)
    assert np.shares_memory(got, X) and not got.flags.writeable
    sub = sig.embeddings(pool[::-1][:5])  # another order: a gathered copy
    np.testing.assert_array_equal(sub, X[::-1][:5])


def test_put_checks_kind_and_lengths():
    sig = Signals(key="m")
    with pytest.raises(CuratorError, match="unknown signal 'gradients'"):
        sig.put("gradients", ["a"], [1.0])
    with pytest.raises(CuratorError, match="2 ids but 1 values"):
        sig.put("losses", ["a", "b"], [1.0])
    with pytest.raises(CuratorError, match="2-d"):
        sig.put("embeddings", ["a"], [1.0])


class FakeSampler:
    def __init__(self):
        self.targets: list[str] = []
        self.prompts: list[tuple[str, int]] = []

    def target_logprobs(self, prompts, targets):
        self.targets.extend(targets)
        return [np.array([-1.0, -2.0, -6.0]) if "c1" in t else np.array([-0.5]) for t in targets]

    def generate(self, prompts, n, params):
        self.prompts.extend((p, n) for p in prompts)
        return [[f"#### {j % 2}" for j in range(n)] for _ in prompts]


def test_losses_are_mean_target_nll_and_cached():
    s = FakeSampler()
    sig = Signals(sampler=s, key="m")
    pool = [ex("c0"), ex("c1")]
    np.testing.assert_allclose(sig.losses(pool), [0.5, 3.0])
    np.testing.assert_allclose(sig.losses(pool[::-1]), [3.0, 0.5])
    assert len(s.targets) == 2 and s.targets[0] == " It is c0.\n#### 1\nDone."
    assert sig.stats["losses"] == {"computed": 2, "cached": 2}


def test_answers_are_extracted_and_cached_per_n():
    from curator.data.grading import get_grader

    s = FakeSampler()
    sig = Signals(sampler=s, grader=get_grader("gsm8k"), key="m")
    assert sig.answers([ex("c0")], 3) == [["0", "1", "0"]]
    assert sig.answers([ex("c0")], 3) == [["0", "1", "0"]]
    assert len(s.prompts) == 1 and s.prompts[0] == ("What is c0?\nAnswer:", 3)
    sig.answers([ex("c0")], 4)  # a different n is a different signal
    assert len(s.prompts) == 2


def test_missing_backends_are_explained():
    with pytest.raises(CuratorError, match="losses need a sampler"):
        Signals(key="m").losses([ex("a")])
    with pytest.raises(CuratorError, match="answers need a sampler and a grader"):
        Signals(sampler=FakeSampler(), key="m").answers([ex("a")])
    with pytest.raises(CuratorError, match="embeddings need the model and tokenizer"):
        Signals(key="m").embeddings([ex("a")])


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is not None, reason="sentence-transformers is installed"
)
def test_sentence_transformers_encoder_without_the_extra_names_the_pip_extra():
    with pytest.raises(MissingExtraError, match=r"pip install 'premem-curator\[st\]'"):
        Signals(encoder="all-MiniLM-L6-v2").embeddings([ex("a")])


@pytest.fixture(scope="module")
def tiny():
    from curator.models.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(seed=0, tokenizer=tok), tok


def test_model_embeddings_are_mean_pooled_normalised_and_padding_invariant(tiny):
    import torch

    from curator.data.format import PromptFormat, encode_prompt

    model, tok = tiny
    short, long = ex("s", "2+2?"), ex("l", "A much longer question about apples and pears?")
    alone = Signals(model, tok, batch_size=1).embeddings([short, long])
    batched = Signals(model, tok, batch_size=2).embeddings([short, long])
    assert alone.shape == (2, model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # right padding + mask: pads never count
    # hand-computed: mean of the last hidden states over the prompt's tokens, normalised
    ids = torch.tensor([encode_prompt(tok, PromptFormat().prompt_text(short))])
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0).numpy()
    np.testing.assert_allclose(alone[0], h / np.linalg.norm(h), atol=1e-5)


def test_finetuned_weights_change_the_key_and_invalidate_the_cache(tiny):
    import torch

    from curator.models.tiny import tiny_model

    model, tok = tiny
    other = tiny_model(seed=0, tokenizer=tok)
    assert model_fingerprint(model) == model_fingerprint(other)
    cache = SignalCache()
    Signals(model, tok, cache=cache).embeddings([ex("a")])
    again = Signals(other, tok, cache=cache)
    again.embeddings([ex("a")])
    assert again.stats["embeddings"] == {"computed": 0, "cached": 1}
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # one optimizer step's worth of change
    assert model_fingerprint(model) != model_fingerprint(other)
    changed = Signals(other, tok, cache=cache)
    changed.embeddings([ex("a")])
    assert changed.stats["embeddings"] == {"computed": 1, "cached": 0}
