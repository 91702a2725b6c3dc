"""The tracker's lazy rules against a scripted sampler: same final PreMemAcc as full tracking."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.dynamics import metrics as M
from curator.dynamics.tracker import DynamicsTracker, check_references, validate_premem
from curator.errors import ConfigError, DataError
from curator.sampling.base import SamplingParams

FMT = PromptFormat()
GRADER = get_grader("gsm8k")


class ScriptedSampler:
    """Returns scripted completions: sample j of example i at checkpoint m is outcome[i][m][j]."""

    def __init__(self, examples, outcomes, ppl):
        self.index = {FMT.prompt_text(e): i for i, e in enumerate(examples)}
        self.examples, self.outcomes, self.ppl = examples, outcomes, ppl
        self.checkpoint = None
        self.cursor = {}
        self.seeds = []

    def at(self, m):
        self.checkpoint, self.cursor = m, {}
        return self

    def target_logprobs(self, prompts, targets):
        return [np.full(4, -math.log(self.ppl[self.index[p]][self.checkpoint - 1])) for p in prompts]

    def generate(self, prompts, n, params):
        self.seeds.append(params.seed)
        out = []
        for p in prompts:
            i = self.index[p]
            j = self.cursor.get(i, 0)
            script = self.outcomes[i][self.checkpoint - 1][j : j + n]
            assert len(script) == n, "tracker drew more than k samples"
            self.cursor[i] = j + n
            ans = self.examples[i].answer
            out.append([f"so it is\n#### {ans if ok else int(ans) + 1}" for ok in script])
        return out


class CountsSampler(ScriptedSampler):
    """The same script, served to a tracker that asks for one count per prompt in one call."""

    accepts_counts = True

    def generate(self, prompts, n, params):
        assert not isinstance(n, int), "a counts-accepting sampler should get a count per prompt"
        return [super(CountsSampler, self).generate([p], c, params)[0] for p, c in zip(prompts, n)]


class CheckpointModel(torch.nn.Module):
    """Stands in for the model being trained: its one weight is the checkpoint index."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.frozen = torch.nn.Parameter(torch.ones(()), requires_grad=False)


class LiveSampler(ScriptedSampler):
    """A scripted sampler that reads the checkpoint from the live model's weight (like HFSampler)."""

    def __init__(self, examples, outcomes, ppl, model):
        super().__init__(examples, outcomes, ppl)
        self.model = model

    def at(self, m):
        with torch.no_grad():
            self.model.w.fill_(m)
        return self

    def target_logprobs(self, prompts, targets):
        self.checkpoint = int(self.model.w.item())
        return super().target_logprobs(prompts, targets)

    def generate(self, prompts, n, params):
        m = int(self.model.w.item())
        if m != self.checkpoint:  # the tracker loaded another checkpoint's weights
            self.checkpoint, self.cursor = m, {}
        return super().generate(prompts, n, params)


def make_examples(n):
    return [
        Example.make(f"What is {i} + 1?", f"{i} + 1 = {i + 1}\n#### {i + 1}", str(i + 1), id=f"ex{i}") for i in range(n)
    ]


def run(examples, outcomes, ppl, lazy, M_, sampler_cls=ScriptedSampler, **kw):
    model = None
    if kw.get("defer"):
        model = CheckpointModel()
        sampler = LiveSampler(examples, outcomes, ppl, model)
    else:
        sampler = sampler_cls(examples, outcomes, ppl)
    tr = DynamicsTracker(examples, FMT, GRADER, k=len(outcomes[0][0]), p=1.105, lazy=lazy, n_checkpoints=M_, **kw)
    for m in range(1, M_ + 1):
        tr.measure(
            sampler.at(m),
            SimpleNamespace(index=m, step=10 * m, epoch=float(m), metrics={"train_loss": 1.0 / m}),
            model=model,
        )
        if model is not None:  # measuring never leaves other weights in the model
            assert model.w.item() == m
    return tr, tr.ledger(model="scripted"), sampler


def cells(led):
    cell = led.df.set_index(["example_id", "checkpoint"])
    return {
        key: (int(r.n_samples), int(r.n_correct), None if pd.isna(r.skip_reason) else r.skip_reason)
        for key, r in cell.iterrows()
    }


# the hand-worked scenario: k = 5, p = 1.105, three checkpoints
OUT = [
    [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 0, 1, 1, 1]],  # A: running max 2; cut short at 2; final min
    [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]],  # B: memorized throughout
    [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]],  # C: max reached at 1; final not memorized
    [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]],  # D: final memorized with running max 1
]
PPL = [[2.0, 1.5, 1.05], [1.1, 1.05, 1.01], [3.0, 2.0, 1.5], [3.0, 1.2, 1.0]]


@pytest.mark.parametrize("sampler_cls", [ScriptedSampler, CountsSampler])
def test_hand_worked_lazy_scenario(sampler_cls):
    ex = make_examples(4)
    tr, led, _ = run(ex, OUT, PPL, True, 3, sampler_cls=sampler_cls)
    cell = led.df.set_index(["example_id", "checkpoint"])
    expect = {  # (n_samples, n_correct, skip_reason)
        ("ex0", 1): (5, 2, None),
        ("ex0", 2): (3, 0, "cannot-raise"),
        ("ex0", 3): (3, 2, "determined"),
        ("ex1", 1): (0, 0, "memorized"),
        ("ex1", 2): (0, 0, "memorized"),
        ("ex1", 3): (0, 0, "determined"),
        ("ex2", 1): (5, 5, None),
        ("ex2", 2): (0, 0, "max-reached"),
        ("ex2", 3): (5, 4, None),
        ("ex3", 1): (5, 0, None),
        ("ex3", 2): (5, 1, None),
        ("ex3", 3): (3, 1, "determined"),
    }
    for key, (s, c, why) in expect.items():
        row = cell.loc[key]
        got = (int(row.n_samples), int(row.n_correct), None if pd.isna(row.skip_reason) else row.skip_reason)
        assert got == (s, c, why), key
    assert tr.samples_drawn == 34
    assert cells(led) == expect
    np.testing.assert_allclose(M.premem_acc(led)[3].to_numpy(), [0.4, 0, 0.8, 0.2])
    assert led.meta["lazy"] is True and led.meta["k"] == 5 and led.meta["model"] == "scripted"
    assert (led.df["train_loss"] == 1.0 / led.df["checkpoint"]).all()
    assert cell.loc[("ex0", 1), "target_tokens"] == 4
    assert cell.loc[("ex0", 1), "perplexity"] == pytest.approx(2.0)


def test_hand_worked_deferred_scenario():
    """Only A, B, D are memorized at the end; C's intermediate cells are never sampled, and the
    earlier checkpoints are sampled latest first (A finds R = 2 at checkpoint 2, so checkpoint 1
    cannot cut it; D finds R = 1 and stops checkpoint 1 after four wrong samples)."""
    ex = make_examples(4)
    tr, led, _ = run(ex, OUT, PPL, True, 3, defer=True)
    expect = {
        ("ex0", 1): (5, 2, None),
        ("ex0", 2): (5, 2, None),
        ("ex0", 3): (3, 2, "determined"),
        ("ex1", 1): (0, 0, "memorized"),
        ("ex1", 2): (0, 0, "memorized"),
        ("ex1", 3): (0, 0, "determined"),
        ("ex2", 1): (0, 0, "deferred"),
        ("ex2", 2): (0, 0, "deferred"),
        ("ex2", 3): (5, 4, None),
        ("ex3", 1): (4, 0, "cannot-raise"),
        ("ex3", 2): (5, 1, None),
        ("ex3", 3): (3, 1, "determined"),
    }
    assert cells(led) == expect
    assert tr.samples_drawn == 30  # lazy: 34, full: 60
    np.testing.assert_allclose(M.premem_acc(led)[3].to_numpy(), [0.4, 0, 0.8, 0.2])
    assert led.meta["defer"] is True and not tr._snapshots
    # checkpoint 2's dataset PreMemAcc is unknown (C was never sampled there) but bounded
    summ = M.summary(led)
    assert np.isnan(summ.loc[2, "premem_acc"]) and summ.loc[3, "premem_acc"] == pytest.approx(1.4 / 4)


def test_deferred_needs_model_and_a_live_sampler():
    ex = make_examples(2)
    tr = DynamicsTracker(ex, FMT, GRADER, k=2, lazy=True, defer=True, n_checkpoints=2)
    s = ScriptedSampler(ex, [[[1, 1]] * 2] * 2, [[2.0, 2.0]] * 2)
    with pytest.raises(ConfigError, match="needs the live model"):
        tr.measure(s.at(1), SimpleNamespace(index=1, step=1, epoch=1.0))
    with pytest.raises(ConfigError, match="sampler_factory"):
        tr.measure(s.at(1), SimpleNamespace(index=1, step=1, epoch=1.0), model=CheckpointModel())
    with pytest.raises(ConfigError, match="cannot be combined with lazy=False"):
        DynamicsTracker(ex, FMT, GRADER, lazy=False, defer=True, n_checkpoints=2)
    with pytest.raises(ConfigError, match="exact_every_checkpoint"):
        DynamicsTracker(ex, FMT, GRADER, defer=True, exact_every_checkpoint=True)


def test_deferred_with_a_sampler_factory():
    """A sampler that keeps its own copy of the weights (vLLM-like) is rebuilt per earlier state."""
    ex = make_examples(4)
    model = CheckpointModel()
    built = []

    def factory(m):
        s = ScriptedSampler(ex, OUT, PPL).at(int(m.w.item()))
        built.append(s.checkpoint)
        return s

    tr = DynamicsTracker(ex, FMT, GRADER, k=5, p=1.105, defer=True, n_checkpoints=3)
    for m in (1, 2, 3):
        with torch.no_grad():
            model.w.fill_(m)
        tr.measure(
            factory(model), SimpleNamespace(index=m, step=m, epoch=float(m)), model=model, sampler_factory=factory
        )
    assert built == [1, 2, 3, 2, 1] and model.w.item() == 3
    assert cells(tr.ledger())[("ex3", 1)] == (4, 0, "cannot-raise")
    with pytest.raises(ConfigError, match="after the final checkpoint"):
        tr.measure(factory(model), SimpleNamespace(index=4, step=4, epoch=4.0), model=model, sampler_factory=factory)


def test_deferred_memory_check():
    from curator.dynamics.tracker import check_deferred_memory

    model = torch.nn.Linear(10, 10)  # 110 float32 trainable parameters = 440 bytes per copy
    model.bias.requires_grad_(False)  # frozen weights are not copied: 100 x 4 bytes
    assert check_deferred_memory(model, 3, available=10_000) == 1200
    with pytest.raises(ConfigError, match=r"3 copies of 0.00 GiB.*only 0.0 GiB.*LoRA"):
        check_deferred_memory(model, 3, available=1400)


def test_full_tracking_samples_everything():
    ex = make_examples(4)
    tr, led, sampler = run(ex, OUT, PPL, False, 3)
    assert tr.samples_drawn == 60 and led.is_complete
    assert (led.df["n_samples"] == 5).all()
    np.testing.assert_allclose(M.premem_acc(led)[3].to_numpy(), [0.4, 0, 0.8, 0.2])
    assert len(set(sampler.seeds)) == len(sampler.seeds)  # no two calls replay one random stream


@pytest.mark.parametrize("seed", range(40))
def test_lazy_equals_full_on_random_scenarios(seed):
    rng = np.random.default_rng(seed)
    N, M_, k = int(rng.integers(1, 9)), int(rng.integers(1, 6)), int(rng.integers(1, 7))
    ex = make_examples(N)
    # correctness probability and perplexity drift per example so memorization happens mid-run
    outcomes = [[list((rng.random(k) < rng.random()).astype(int)) for _ in range(M_)] for _ in range(N)]
    ppl = [
        list(np.sort(1 + rng.exponential(0.3, M_))[::-1]) if rng.random() < 0.7 else list(1 + rng.exponential(0.3, M_))
        for _ in range(N)
    ]
    full_tr, full, _ = run(ex, outcomes, ppl, False, M_)
    lazy_tr, lazy, _ = run(ex, outcomes, ppl, True, M_)
    every_tr, every, _ = run(ex, outcomes, ppl, True, M_, exact_every_checkpoint=True)
    defer_tr, defer, _ = run(ex, outcomes, ppl, True, M_, defer=True)
    counts_tr, counts, _ = run(ex, outcomes, ppl, True, M_, sampler_cls=CountsSampler)
    pf, pl, pe = M.premem_acc(full), M.premem_acc(lazy), M.premem_acc(every)
    # deferred: the final checkpoint is identical too, and never costs more than full tracking
    pd_ = M.premem_acc(defer)
    assert not pd_[M_].isna().any()
    np.testing.assert_array_equal(pd_[M_].to_numpy(), pf[M_].to_numpy())
    lo, hi = M.premem_bounds(defer)
    assert ((lo <= pf + 1e-12) & (pf <= hi + 1e-12)).all().all()
    assert defer_tr.samples_drawn <= full_tr.samples_drawn
    # an example not memorized at the end is never sampled before it
    final_mem = defer.df[defer.df.checkpoint == M_].set_index("example_id")["memorized"]
    early = defer.df[defer.df.checkpoint < M_]
    assert (early.loc[~early.example_id.map(final_mem).astype(bool), "n_samples"] == 0).all()
    # batching the draws into one call per round changes no decision
    assert cells(counts) == cells(lazy) and counts_tr.generate_calls <= lazy_tr.generate_calls
    # final checkpoint: identical, and determined for every example
    assert not pl[M_].isna().any()
    np.testing.assert_array_equal(pl[M_].to_numpy(), pf[M_].to_numpy())
    # exact_every_checkpoint: identical at every checkpoint
    np.testing.assert_array_equal(pe.to_numpy(), pf.to_numpy())
    # intermediate lazy values: determined ones equal full, bounds always contain the full value
    lo, hi = M.premem_bounds(lazy)
    assert ((lo <= pf + 1e-12) & (pf <= hi + 1e-12)).all().all()
    det = pl.notna()
    np.testing.assert_array_equal(pl[det].to_numpy()[det.to_numpy()], pf.to_numpy()[det.to_numpy()])
    assert lazy_tr.samples_drawn <= every_tr.samples_drawn <= full_tr.samples_drawn
    # a skipped cell always says why, and only skipped cells have fewer than k samples
    short = lazy.df["n_samples"] < k
    assert (lazy.df.loc[short, "skip_reason"].notna()).all()
    assert lazy.df.loc[~short, "skip_reason"].isna().all()


def test_bad_settings():
    ex = make_examples(2)
    with pytest.raises(ConfigError) as e:
        DynamicsTracker([], FMT, GRADER, k=0, p=1.0, lazy=True)
    msg = str(e.value)
    assert "4 problems" in msg and "empty" in msg and "k" in msg and "p must be" in msg and "n_checkpoints" in msg
    tr = DynamicsTracker(ex, FMT, GRADER, k=2, lazy=False)
    s = ScriptedSampler(ex, [[[1, 1]] * 2] * 2, [[2.0, 2.0]] * 2)
    tr.measure(s.at(2), SimpleNamespace(index=2, step=2, epoch=2.0))
    with pytest.raises(ConfigError, match="increasing order"):
        tr.measure(s.at(1), SimpleNamespace(index=1, step=1, epoch=1.0))
    with pytest.raises(DataError, match="duplicate ids"):
        DynamicsTracker(ex + ex[:1], FMT, GRADER, lazy=False)


def test_reference_check_and_validation():
    ex = make_examples(3)
    bad = ex + [Example.make("q", "2 + 2 = 4\n#### 5", "4", id="wrong")]
    assert check_references(ex, GRADER, FMT) == 0
    with pytest.raises(DataError, match="1 of 4 reference solutions do not grade"):
        check_references(bad, GRADER, FMT)
    assert check_references(bad, GRADER, FMT, allow_bad_references=True) == 1
    from curator.training.settings import TrainSettings

    assert validate_premem(ex, GRADER, fmt=FMT, train_settings=TrainSettings(epochs=2), k=5, p=1.1) == 2
    with pytest.raises(ConfigError, match="produces no checkpoint"):
        validate_premem(ex, GRADER, fmt=FMT, train_settings=TrainSettings(epochs=1, checkpoint_every=50), k=5, p=1.1)
    with pytest.raises(ConfigError, match="empty"):
        validate_premem([], GRADER, fmt=FMT, train_settings=TrainSettings(), k=5, p=1.1)


def tiny_examples():
    pairs = [(1, 2), (3, 4), (2, 2), (5, 1), (6, 3), (7, 1)]
    return [Example.make(f"{a}+{b}?", f"{a}+{b}={a + b}\n#### {a + b}", str(a + b), id=f"e{a}{b}") for a, b in pairs]


@pytest.mark.slow
def test_end_to_end_tiny_model_lazy_equals_full(tmp_path):
    """Real training, real HFSampler: greedy sampling makes every pass see the same completions."""
    from curator.dynamics.ledger import read_ledger
    from curator.models import load_model
    from curator.sampling.hf import HFSampler
    from curator.training import TrainSettings, finetune

    lm = load_model("tiny-random")
    ex = tiny_examples()
    st = TrainSettings(epochs=6, learning_rate=3e-3, batch_size=2, seed=0)
    n = st.n_checkpoints(len(ex))
    sp = SamplingParams(temperature=0.0, max_new_tokens=24, stop=FMT.stop)
    kw = dict(k=3, params=sp, p=1.3, n_checkpoints=n, tokenizer=lm.tokenizer)
    full = DynamicsTracker(ex, FMT, GRADER, lazy=False, **kw)
    lazy = DynamicsTracker(ex, FMT, GRADER, lazy=True, **kw)
    defer = DynamicsTracker(ex, FMT, GRADER, lazy=True, defer=True, **kw)
    restored = []

    def measure(model, info):
        s = HFSampler(model, lm.tokenizer, batch_size=32)
        full.measure(s, info)
        lazy.measure(s, info)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        defer.measure(s, info, model=model)
        after = model.state_dict()
        restored.append(all(torch.equal(before[k], after[k]) for k in before))

    finetune(lm.model, lm.tokenizer, ex, FMT, st, on_checkpoint=measure, progress=False)
    lf, ll = full.ledger(model="tiny-random"), lazy.ledger(model="tiny-random")
    # training works: perplexity falls and the model learns to answer
    ppl = M.summary(lf)["mean_perplexity"]
    assert ppl.iloc[-1] < ppl.iloc[0] / 3
    assert M.train_accuracy(lf).iloc[-1] > 0
    np.testing.assert_array_equal(M.premem_acc(ll)[n].to_numpy(), M.premem_acc(lf)[n].to_numpy())
    assert lazy.samples_drawn < full.samples_drawn == 3 * len(ex) * n
    # deferred: earlier weights were loaded back and sampled, the final weights restored bit for bit
    ld = defer.ledger(model="tiny-random")
    np.testing.assert_array_equal(M.premem_acc(ld)[n].to_numpy(), M.premem_acc(lf)[n].to_numpy())
    assert restored == [True] * n and defer.samples_drawn < full.samples_drawn
    sampled_early = ld.df[(ld.df.checkpoint < n) & (ld.df.n_samples > 0)]
    assert len(sampled_early) > 0
    # ... with the earlier weights: greedy answers there match what full tracking saw at the time
    key = ["example_id", "checkpoint"]
    both = ld.df[ld.df.skip_reason.isna()].merge(lf.df, on=key, suffixes=("_d", "_f"))
    assert (both.n_correct_d == both.n_correct_f).all() and (both.checkpoint < n).any()
    # the perplexity in the ledger is exp of the mean NLL over every target token
    tok = lm.tokenizer
    row = lf.df.iloc[-1]
    target = FMT.target_text(ex[-1])
    assert row.target_tokens == len(tok(target, add_special_tokens=False)["input_ids"])
    path = ll.to_parquet(tmp_path / "ledger.parquet")
    back = read_ledger(path)
    assert back.meta["lazy"] is True and back.meta["sampling"]["temperature"] == 0.0
    assert (back.df["skip_reason"].notna()).sum() > 0
