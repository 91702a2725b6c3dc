"""The vLLM wiring, against a fake `vllm` module backed by a transformers model.

vLLM cannot be installed here (it needs a CUDA GPU), so the tests install a fake ``vllm`` into
``sys.modules`` exposing exactly the API curator uses: ``LLM`` (constructor, ``get_tokenizer``,
``generate`` with ``lora_request``, ``reset_prefix_cache``, and the in-process model at
``llm_engine.model_executor.driver_worker.model_runner.model`` with ``load_weights``),
``SamplingParams``, ``inputs.TokensPrompt`` and ``lora.request.LoRARequest``. The fake keeps its own
copy of the weights, loaded from the directory it is given, as vLLM does; it records a hash of
the weights every request ran on, so the tests can assert that each checkpoint was measured on
exactly the weights trained up to it.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import types
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.errors import ConfigError, MissingExtraError
from curator.sampling.base import SamplingParams
from curator.training.settings import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class _EngineModel:
    """The engine's model as vLLM exposes it: ``load_weights`` takes (transformers name, tensor)."""

    def __init__(self, llm):
        self.llm = llm

    def load_weights(self, weights):
        import torch

        state = self.llm.hf.state_dict()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in state:
                    raise KeyError(f"fake vLLM: no weight named {name}")
                state[name].copy_(tensor)
        self.llm.weight_loads += 1


class FakeLLM:
    built: ClassVar[list[FakeLLM]] = []

    def __init__(
        self,
        model,
        tokenizer=None,
        dtype="auto",
        seed=0,
        enable_prefix_caching=True,
        enable_lora=False,
        max_lora_rank=16,
        gpu_memory_utilization=0.9,
        trust_remote_code=False,
        tensor_parallel_size=1,
        max_model_len=None,
        enable_sleep_mode=False,
        distributed_executor_backend=None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(tokenizer or model)
        self.enable_lora, self.max_lora_rank = enable_lora, max_lora_rank
        self.kwargs = {"gpu_memory_utilization": gpu_memory_utilization, "tensor_parallel_size": tensor_parallel_size}
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=_EngineModel(self)))
            )
        )
        self.weight_loads = self.prefix_resets = 0
        self.requests: list[tuple[str, str]] = []  # (kind, hash of the weights it ran on)
        self._adapters: dict[int, object] = {}
        FakeLLM.built.append(self)

    def get_tokenizer(self):
        return self.tok

    def reset_prefix_cache(self):
        self.prefix_resets += 1

    def _model(self, lora_request):
        if lora_request is None:
            return self.hf
        assert self.enable_lora, "LoRARequest sent to an engine built without enable_lora"
        aid = lora_request.lora_int_id
        if aid not in self._adapters or lora_request.load_inplace:
            from peft import PeftModel

            self._adapters[aid] = PeftModel.from_pretrained(copy.deepcopy(self.hf), lora_request.lora_path).eval()
        return self._adapters[aid]

    def generate(self, requests, sp, lora_request=None, use_tqdm=False):
        import torch

        model = self._model(lora_request)
        self.requests.append(("score" if sp.prompt_logprobs else "sample", weights_hash(model)))
        outs = []
        with torch.inference_mode():
            for req in requests:
                ids = torch.tensor([req["prompt_token_ids"]])
                if sp.prompt_logprobs:
                    lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                    plp = [None] + [
                        {int(t): SimpleNamespace(logprob=float(lp[k, t]))}
                        for k, t in enumerate(req["prompt_token_ids"][1:])
                    ]
                    outs.append(SimpleNamespace(prompt_logprobs=plp, outputs=[]))
                    continue
                texts = []
                for j in range(sp.n):
                    if sp.temperature == 0:
                        gen = model.generate(
                            ids,
                            attention_mask=torch.ones_like(ids),
                            do_sample=False,
                            max_new_tokens=sp.max_tokens,
                            pad_token_id=self.tok.pad_token_id,
                        )
                    else:
                        torch.manual_seed((sp.seed or 0) * 1000 + j)
                        gen = model.generate(
                            ids,
                            attention_mask=torch.ones_like(ids),
                            do_sample=True,
                            temperature=sp.temperature,
                            top_p=sp.top_p,
                            top_k=0,
                            max_new_tokens=sp.max_tokens,
                            pad_token_id=self.tok.pad_token_id,
                        )
                    text = self.tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
                    for s in sp.stop or []:
                        if s in text:
                            text = text[: text.index(s)]
                    texts.append(SimpleNamespace(text=text))
                outs.append(SimpleNamespace(outputs=texts, prompt_logprobs=None))
        return outs


class FakeSamplingParams:
    def __init__(
        self,
        n=1,
        temperature=1.0,
        top_p=1.0,
        max_tokens=16,
        stop=None,
        seed=None,
        skip_special_tokens=True,
        prompt_logprobs=None,
        detokenize=True,
    ):
        self.n, self.temperature, self.top_p, self.max_tokens = n, temperature, top_p, max_tokens
        self.stop, self.seed, self.prompt_logprobs = stop, seed, prompt_logprobs


class FakeLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path, load_inplace=False):
        self.lora_name, self.lora_int_id, self.lora_path, self.load_inplace = (
            lora_name,
            lora_int_id,
            lora_path,
            load_inplace,
        )


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": list(prompt_token_ids)}
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, mod in {"vllm": vllm, "vllm.inputs": inputs, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    FakeLLM.built = []
    yield FakeLLM


@pytest.fixture(scope="module")
def base():
    from curator.models import load_model

    return load_model("tiny-random")


def ex(i: int) -> Example:
    return Example.make(f"what is {i} + {i + 1}", f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}", str(2 * i + 1))


TRAIN = [ex(i) for i in range(4)]
TEST = [ex(i) for i in range(30, 33)]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=8, seed=1)


def run_round(base, provider, *, lora=None, defer=False, lazy=False):
    from curator.engine import MeasureSettings, ModelStart, RoundExtras, TestEval, train_and_track

    seen: list[str] = []
    res = train_and_track(
        base,
        TRAIN,
        fmt=PromptFormat(),
        grader=get_grader("gsm8k"),
        training=TrainSettings(epochs=3, batch_size=2, learning_rate=5e-3, max_length=64),
        provider=provider,
        measure=MeasureSettings(k=2, params=GREEDY, p=1.5, lazy=lazy or defer, defer=defer),
        start=ModelStart(lora=lora, seed=0),
        test=TestEval(TEST, GREEDY),
        extras=RoundExtras(after_checkpoint=lambda s, info, rows: seen.append(live_hash[0]) or None),
        progress=False,
    )
    return res, seen


live_hash = [""]


def track_live_weights(monkeypatch):
    """Record the live model's weights at every checkpoint callback (before measurement)."""
    from curator.training import sft

    real = sft.finetune

    def finetune(model, tok, examples, fmt, settings, on_checkpoint=None, **kw):
        def cb(m, info):
            live_hash[0] = weights_hash(m)
            on_checkpoint(m, info)

        return real(model, tok, examples, fmt, settings, on_checkpoint=cb, **kw)

    monkeypatch.setattr("curator.training.finetune", finetune)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_vllm_follows_the_trained_weights_with_one_engine(base, fake_vllm, monkeypatch, use_lora):
    from curator.models import LoraSettings
    from curator.sampling.providers import HFProvider, make_provider

    track_live_weights(monkeypatch)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0) if use_lora else None
    base_hash = weights_hash(base.model)
    provider = make_provider("vllm", base, lora=use_lora)
    res, seen = run_round(base, provider, lora=lora)
    engine = fake_vllm.built[0]
    # one engine for the whole round, never one per checkpoint
    assert len(fake_vllm.built) == 1 and provider.engines_built == 1
    # every request at checkpoint c ran on exactly the weights trained up to c: group the engine's
    # requests by checkpoint (score first, then samples); the last group is the test evaluation
    hashes = [h for _, h in engine.requests]
    assert len(set(seen)) == 3
    ran_on = list(dict.fromkeys(hashes))
    assert ran_on == seen  # the final test evaluation reuses the final checkpoint's weights
    assert engine.requests[-1] == ("sample", seen[-1])
    if use_lora:
        assert weights_hash(engine.hf) == base_hash  # base weights never change; nothing merged
        assert engine.weight_loads == 0
    else:
        assert engine.weight_loads == 4 and engine.prefix_resets == 4  # 3 checkpoints + evaluation
    provider.close()
    # the hf backend at T=0 gives the same ledger and test accuracy
    ref, _ = run_round(base, HFProvider(base.tokenizer), lora=lora)
    a, b = res.ledger.df, ref.ledger.df
    assert a["n_correct"].tolist() == b["n_correct"].tolist()
    np.testing.assert_allclose(a["target_nll"], b["target_nll"], rtol=0, atol=1e-4)
    assert res.test_accuracy == ref.test_accuracy


def test_deferred_tracking_loads_each_earlier_state_into_the_engine(base, fake_vllm, monkeypatch):
    from curator.dynamics.metrics import premem_acc
    from curator.sampling.providers import HFProvider, make_provider

    provider = make_provider("vllm", base)
    res, _ = run_round(base, provider, defer=True)
    ref, _ = run_round(base, HFProvider(base.tokenizer), defer=True)
    assert len(fake_vllm.built) == 1
    assert premem_acc(res.ledger, 1.5)[3].to_dict() == premem_acc(ref.ledger, 1.5)[3].to_dict()
    assert res.ledger.df["n_samples"].tolist() == ref.ledger.df["n_samples"].tolist()
    # the engine ends on the final weights (deferred sampling restores them)
    assert weights_hash(fake_vllm.built[0].hf) == weights_hash(res.model)


def test_vllm_launch_checks():
    from curator.sampling.vllm import VLLMSettings, check_vllm_launch

    assert check_vllm_launch(VLLMSettings(), 1, 1) == []
    assert check_vllm_launch(VLLMSettings(tensor_parallel_size=2), 2, 2) == []
    (p,) = check_vllm_launch(VLLMSettings(tensor_parallel_size=4), 4, 2)
    assert p.startswith("dynamics.vllm.tensor_parallel_size=4 needs 4 GPUs but this machine has 2")
    (p,) = check_vllm_launch(VLLMSettings(tensor_parallel_size=2), 3, 8)
    assert "must divide the number of processes (3)" in p
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        VLLMSettings(gpu_memory_utilization=1.5)


def test_vllm_asked_for_but_missing_fails_before_any_model_loads(tmp_path, monkeypatch):
    from curator.recipes import load_recipe
    from curator.run import prepare_workspace

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    r = load_recipe("demo", [f"output_dir={tmp_path}", "dynamics.backend=vllm"])
    with pytest.raises(MissingExtraError, match="dynamics.backend: vllm needs the 'vllm' package"):
        prepare_workspace(r, progress=False)
    assert not (tmp_path / "seed_ids.json").exists()


def test_from_loaded_serves_a_lora_model_as_base_plus_adapter(base, fake_vllm):
    import torch

    from curator.models import LoraSettings, apply_lora
    from curator.models.loading import LoadedModel
    from curator.sampling import make_sampler
    from curator.sampling.hf import HFSampler

    torch.manual_seed(0)
    peft = apply_lora(copy.deepcopy(base.model), LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # a trained-looking adapter (peft starts B at zero)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    s = make_sampler("vllm", LoadedModel(peft, base.tokenizer, "tiny-random", "cpu", "float32"))
    engine = fake_vllm.built[0]
    assert weights_hash(engine.hf) == weights_hash(base.model)  # the base, not a merged copy
    prompts, targets = PromptFormat().pairs(TRAIN)
    got = s.target_logprobs(prompts, targets)
    want = HFSampler(peft.eval(), base.tokenizer).target_logprobs(prompts, targets)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_measure_checkpoints_serves_every_checkpoint_from_one_engine(tmp_path, fake_vllm, use_lora):
    """`curate measure --backend vllm`: one engine for the whole run (built from the first
    checkpoint), each checkpoint measured on exactly its own weights (full: loaded into the engine;
    LoRA: its adapter served), and the ledger hf gives."""
    import torch

    from curator.dynamics.settings import MeasureSettings
    from curator.measure import CheckpointLoader, measure_checkpoints
    from curator.models import LoraSettings, apply_lora, load_model

    lm = load_model("tiny-random")
    model = apply_lora(lm.model, LoraSettings(r=4, alpha=8, dropout=0.0)) if use_lora else lm.model
    saved = []
    for i in (1, 2):  # stand-in for training: move the trainable weights, save a checkpoint
        with torch.no_grad():
            g = torch.Generator().manual_seed(i)
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.save_pretrained(tmp_path / f"checkpoint-{i}")
        lm.tokenizer.save_pretrained(tmp_path / f"checkpoint-{i}")
        saved.append(weights_hash(model))

    def measure(backend):
        loader = CheckpointLoader("tiny-random" if use_lora else None)
        settings = MeasureSettings(k=2, params=GREEDY, p=1.5, lazy=False)
        return measure_checkpoints([tmp_path], TRAIN, measure=settings, loader=loader, backend=backend, progress=False)

    led = measure("vllm")
    assert len(fake_vllm.built) == 1  # never an engine per checkpoint
    engine = fake_vllm.built[0]
    assert list(dict.fromkeys(h for _, h in engine.requests)) == saved
    assert engine.weight_loads == (0 if use_lora else 2)
    ref = measure("hf")
    assert led.df["n_correct"].tolist() == ref.df["n_correct"].tolist()
    np.testing.assert_allclose(led.df["target_nll"], ref.df["target_nll"], rtol=0, atol=1e-4)
