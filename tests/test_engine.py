"""The round engine (`train_and_track`), sampler providers, sharding and the Loop contract."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.errors import ConfigError, CuratorError
from curator.sampling.base import SamplingParams
from curator.training.settings import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def ex(i: int) -> Example:
    return Example.make(f"what is {i} + {i + 1}", f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}", str(2 * i + 1))


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def base():
    from curator.models import load_model

    return load_model("tiny-random")


class SpyProvider:
    """An HF provider that records the weights it was asked to sample at every call."""

    def __init__(self, tokenizer):
        from curator.sampling.providers import HFProvider

        self.inner = HFProvider(tokenizer, batch_size=16)
        self.seen: list[str] = []

    def sampler(self, model):
        self.seen.append(weights_hash(model))
        return self.inner.sampler(model)

    def close(self):
        self.inner.close()


def test_train_and_track_measures_every_checkpoint_on_its_weights(base):
    from curator.engine import MeasureSettings, RoundExtras, TestEval, train_and_track
    from curator.sampling.hf import HFSampler

    train, test = [ex(i) for i in range(4)], [ex(i) for i in range(20, 23)]
    settings = TrainSettings(epochs=3, batch_size=2, learning_rate=3e-3, max_length=64)
    provider = SpyProvider(base.tokenizer)
    at_checkpoint: list[str] = []
    params = SamplingParams(temperature=0.8, max_new_tokens=6, seed=3)
    res = train_and_track(
        base,
        train,
        fmt=PromptFormat(),
        grader=get_grader("gsm8k"),
        training=settings,
        provider=provider,
        measure=MeasureSettings(k=2, params=params, p=1.5, lazy=False),
        test=TestEval(test),
        extras=RoundExtras(
            after_checkpoint=lambda s, info, rows: at_checkpoint.append(weights_hash(s.model)) or {"seen": 1.0}
        ),
        progress=False,
    )
    # the base model is untouched: the round trained a copy
    assert res.model is not base.model
    assert [r["checkpoint"] for r in res.checkpoints] == [1, 2, 3]
    assert all(r["seen"] == 1.0 and "train_loss" in r for r in res.checkpoints)
    # each checkpoint sampled the weights trained up to it (three distinct states), then the final
    # test evaluation sampled the final weights
    assert provider.seen[:3] == at_checkpoint and len(set(at_checkpoint)) == 3
    assert provider.seen[3:] == [weights_hash(res.model)] == [at_checkpoint[-1]]
    # the final checkpoint's ledger scores are the trained model's, exactly
    nll, _ = HFSampler(res.model, base.tokenizer).target_nll(*PromptFormat().pairs(train))
    last = res.ledger.df[res.ledger.df.checkpoint == 3].set_index("example_id").loc[[e.id for e in train]]
    np.testing.assert_allclose(last["target_nll"].to_numpy(), nll, rtol=0, atol=1e-6)
    assert res.ledger.meta["model"] == "tiny-random" and res.ledger.meta["train"]["epochs"] == 3
    assert res.samples_drawn == 4 * 2 * 3 and 0.0 <= res.test_accuracy <= 1.0


def test_in_place_with_lora_gives_the_peft_model_back(base):
    import copy

    from curator.engine import MeasureSettings, ModelStart, train_and_track
    from curator.models import LoraSettings
    from curator.models.loading import LoadedModel
    from curator.sampling.providers import HFProvider

    own = LoadedModel(copy.deepcopy(base.model), base.tokenizer, "tiny-random", base.device, base.dtype)
    settings = TrainSettings(epochs=1, batch_size=2, max_length=64)
    res = train_and_track(
        own,
        [ex(i) for i in range(2)],
        fmt=PromptFormat(),
        grader=get_grader("gsm8k"),
        training=settings,
        provider=HFProvider(base.tokenizer),
        measure=MeasureSettings(k=1, params=SamplingParams(max_new_tokens=4), p=1.5, lazy=False),
        start=ModelStart(lora=LoraSettings(r=4), in_place=True),
        progress=False,
    )
    assert hasattr(res.model, "peft_config")
    assert res.model.get_base_model() is own.model


def test_sharded_sampler_equals_one_process(base):
    from curator.sampling.hf import HFSampler
    from curator.sampling.sharded import ShardedSampler

    inner = HFSampler(base.model, base.tokenizer, batch_size=8)
    prompts = ["1 + 2 =", "3 + 4 =", "1 + 2 =", "abc", "5 + 5 =", "1 + 2 ="]  # repeats of one prompt
    counts = [2, 1, 3, 2, 1, 2]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=5, stop=(), seed=11)
    targets = [" 3", " 7", " 3", " d", " 10", " 3"]
    want_gen = inner.generate(prompts, counts, params)
    want_lp = inner.target_logprobs(prompts, targets)
    for world in (2, 3):
        shares: list = []
        for r in range(world):  # each rank's own share, as it would send it to the gather
            s = ShardedSampler(inner, r, world, lambda obj, shares=shares: (shares.append(obj), [obj])[1])
            s.generate(prompts, counts, params)
        got = ShardedSampler(inner, 0, world, lambda obj, shares=shares: shares).generate(prompts, counts, params)
        assert got == want_gen
        # every copy of a prompt went to the same rank, so "which repeat" is the same as in one call
        owners = {prompts[i]: r for r, (idx, _) in enumerate(shares) for i in idx}
        assert sum(len(idx) for idx, _ in shares) == len(prompts) and len(owners) == 4
        lp_shares: list = []
        for r in range(world):
            ShardedSampler(
                inner, r, world, lambda obj, lp_shares=lp_shares: (lp_shares.append(obj), [obj])[1]
            ).target_logprobs(prompts, targets)
        got_lp = ShardedSampler(inner, 0, world, lambda obj, lp_shares=lp_shares: lp_shares).target_logprobs(
            prompts, targets
        )
        for a, b in zip(got_lp, want_lp):  # other batch companions: padding moves logits by ~1e-7
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_loop_contract_is_checked_in_one_place():
    from curator.loop import LOOP_METHODS, check_loop, check_loop_instance, get_loop

    active = get_loop("active")
    assert all(callable(getattr(active, m)) for m in LOOP_METHODS)

    class NoSummary:
        def setup(self): ...
        def run_round(self, r): ...
        def save_state(self): ...
        def log_final_artifacts(self, result): ...

    with pytest.raises(CuratorError, match="missing summary"):
        check_loop("mine", NoSummary)
    with pytest.raises(CuratorError, match="done, spec"):
        check_loop_instance("mine", NoSummary())


def test_ranks_disagreeing_is_one_line(monkeypatch):
    from curator import distributed

    monkeypatch.setattr(distributed, "gather_objects", lambda obj, what="": [obj, "something else"])
    with pytest.raises(ConfigError, match=r"disagree on the recipe \(ranks \[1\]"):
        distributed.check_same_on_every_rank({"a": 1}, "recipe")
    monkeypatch.setattr(distributed, "gather_objects", lambda obj, what="": [obj, obj])
    distributed.check_same_on_every_rank({"a": 1}, "recipe")
