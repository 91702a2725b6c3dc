"""Settings, checks, pretraining and the cache of the model organism (docs/ORGANISM.md).

``load_model("organism")`` (or ``organism?seed=1&layers=2``, or ``organism:my.yaml``) ends in
`organism_dir`, which builds the organism on first use into a temporary directory beside the cache
and renames it into place, so a half-built organism is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from curator.console import progress as progress_bar
from curator.data.format import PromptFormat, encode_pair
from curator.data.synthetic import SKILLS, SyntheticTask
from curator.errors import ConfigError, did_you_mean
from curator.io import atomic_path, atomic_write_json
from curator.organism.corpus import build_tokenizer, pretraining_corpus, skill_counts, task_texts, vocabulary
from curator.paths import cache_dir

ALIAS = "organism"
# bump when the build code changes what a given setting produces (the cache key includes it)
BUILD_VERSION = 2
MIN_SKILL_PROBLEMS = 20

DEFAULT_COVERAGE = {"comparison": 0.45, "group_totals": 0.35, "shopping": 0.12, "rates": 0.08, "sharing": 0.0}


@dataclass(frozen=True)
class OrganismConfig:
    """How to build one organism. Every field is part of the cache key.

    Attributes:
        seed: draws the corpus, the initial weights and the batch order.
        coverage: skill -> share of the pretraining corpus (0: the skill is absent).
        pool_skills: skills the finetuning pool offers (a skill absent from both is refused).
        corpus_size: pretraining problems.
        verbose_share: fraction of them answered in the verbose (finetuning) style instead of the
            terse one, so the language of the targets is not new to the model.
        epochs: passes over the corpus.
        hidden, layers, heads: the Llama shape (MLP width 2 x hidden, tied embeddings).
        learning_rate, batch_size, warmup: AdamW with linear warm-up and decay.
        vocab_size: optional cap on the vocabulary; refused if the task's text needs more.
        max_operand, min_steps, max_steps: the synthetic task (the recipes' pool and test use the same).
    """

    seed: int = 0
    coverage: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COVERAGE))
    pool_skills: tuple[str, ...] = tuple(SKILLS)
    corpus_size: int = 12000
    verbose_share: float = 0.25
    epochs: int = 2
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    learning_rate: float = 3e-3
    batch_size: int = 32
    warmup: int = 50
    vocab_size: int | None = None
    max_operand: int = 10
    min_steps: int = 1
    max_steps: int = 2

    @property
    def task(self) -> SyntheticTask:
        return SyntheticTask(
            min_steps=self.min_steps, max_steps=self.max_steps, max_operand=self.max_operand, distractors=0, n_traces=3
        )

    def key(self) -> str:
        blob = json.dumps({"v": BUILD_VERSION, **asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def check_config(cfg: OrganismConfig) -> None:
    """Every reason the settings cannot make a useful organism, all at once (before training)."""
    problems = []
    unknown = sorted(set(cfg.coverage) | set(cfg.pool_skills))
    unknown = [s for s in unknown if s not in SKILLS]
    if unknown:
        problems.append(f"unknown skills {unknown}; choose from {', '.join(SKILLS)}")
    if any(not isinstance(v, (int, float)) or v < 0 for v in cfg.coverage.values()):
        problems.append(f"coverage shares must be numbers >= 0, got {cfg.coverage}")
    elif sum(cfg.coverage.values()) <= 0:
        problems.append("coverage: give at least one skill a share > 0 (the organism must pretrain on something)")
    for s in SKILLS:
        if cfg.coverage.get(s, 0) == 0 and s not in cfg.pool_skills:
            problems.append(
                f"skill {s!r} is absent from both pretraining (coverage 0) and the pool "
                f"(pool_skills); nothing could teach it: give it a coverage share or add "
                "it to pool_skills"
            )
    for name in ("corpus_size", "epochs", "hidden", "layers", "heads", "batch_size"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.hidden % max(cfg.heads, 1):
        problems.append(f"hidden ({cfg.hidden}) must be a multiple of heads ({cfg.heads})")
    if not 0 <= cfg.verbose_share <= 1:
        problems.append(f"verbose_share must be in [0, 1], got {cfg.verbose_share}")
    if not cfg.learning_rate > 0:
        problems.append(f"learning_rate must be > 0, got {cfg.learning_rate}")
    if not problems and sum(cfg.coverage.values()) > 0:
        thin = {
            s: c
            for s, c in skill_counts(cfg.coverage, cfg.corpus_size).items()
            if cfg.coverage.get(s, 0) > 0 and c < MIN_SKILL_PROBLEMS
        }
        if thin:
            problems.append(
                f"corpus_size={cfg.corpus_size} gives skills {thin} fewer than "
                f"{MIN_SKILL_PROBLEMS} pretraining problems; raise corpus_size or set their "
                "coverage to 0 (absent)"
            )
    try:
        _ = cfg.task  # building the task validates its settings
    except ConfigError as e:
        problems.extend(str(p) for p in e.problems)
    if problems:
        raise ConfigError(problems, source="organism")


# ---------------------------------------------------------------- specs


def parse_spec(spec: str) -> OrganismConfig:
    """``organism``, ``organism?key=value&...`` or ``organism:path.yaml`` -> OrganismConfig."""
    from urllib.parse import parse_qsl

    rest = spec[len(ALIAS) :]
    raw: dict[str, Any] = {}
    if rest.startswith(":"):
        path, _, query = rest[1:].partition("?")
        import yaml

        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(
                f"organism config {path!r} does not exist; give a YAML file of organism settings (docs/ORGANISM.md)",
                source="organism",
            )
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of organism settings", source="organism")
    elif rest.startswith("?"):
        query = rest[1:]
    elif rest:
        raise ConfigError(
            f"model spec {spec!r}: write 'organism', 'organism?key=value&...' or 'organism:settings.yaml'",
            source="organism",
        )
    else:
        query = ""
    raw.update(parse_qsl(query, keep_blank_values=True))
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> OrganismConfig:
    known = {f.name: f for f in fields(OrganismConfig)}
    problems, kw = [], {}
    for k, v in raw.items():
        if k not in known:
            problems.append(
                f"unknown organism setting {k!r}{did_you_mean(k, known, parens=True)}; known: {', '.join(known)}"
            )
            continue
        try:
            kw[k] = _coerce(k, v)
        except (TypeError, ValueError):
            problems.append(f"organism setting {k}={v!r} has the wrong type")
    if problems:
        raise ConfigError(problems, source="organism")
    cfg = replace(OrganismConfig(), **kw)
    check_config(cfg)
    return cfg


def _coerce(name: str, v: Any) -> Any:
    if name == "coverage":
        if isinstance(v, str):  # "comparison:0.5,sharing:0"
            v = dict(item.split(":") for item in v.split(",") if item.strip())
        return {str(s).strip(): float(c) for s, c in dict(v).items()}
    if name == "pool_skills":
        return tuple(s.strip() for s in (v.split(",") if isinstance(v, str) else v) if s.strip())
    if name in ("learning_rate", "verbose_share"):
        return float(v)
    if name == "vocab_size":
        return None if v in (None, "", "null", "none") else int(v)
    return int(v)


# ---------------------------------------------------------------- the build


def llama_config(cfg: OrganismConfig, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build(
    cfg: OrganismConfig, out_dir: str | os.PathLike, progress: bool = True, timings: dict[str, float] | None = None
) -> Path:
    """Pretrain the organism and ``save_pretrained`` it (with its tokenizer) into ``out_dir``.

    Checks the settings first; deterministic in ``cfg`` (one CPU thread, seeded everything).
    ``timings`` (optional) receives seconds spent per phase: corpus, tokenizer, training, saving.
    """
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    check_config(cfg)
    t = timings if timings is not None else {}
    t0 = time.perf_counter()
    fmt = PromptFormat()
    corpus = pretraining_corpus(cfg.task, cfg.coverage, cfg.corpus_size, cfg.seed, cfg.verbose_share)
    t["corpus"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    texts = list(task_texts(cfg.task, cfg.seed))
    texts += [fmt.prompt_text(e) + fmt.target_text(e) for e in corpus[:2000]]
    pieces = vocabulary(texts, extra=["\nDone", "\nAnswer", " Answer", "Answer"])
    if cfg.vocab_size is not None and len(pieces) + 4 > cfg.vocab_size:
        raise ConfigError(
            f"vocab_size={cfg.vocab_size} is too small: the task's text needs "
            f"{len(pieces) + 4} tokens (words, digits, punctuation, 4 specials); raise "
            "vocab_size or leave it unset",
            source="organism",
        )
    tok = build_tokenizer(pieces)
    pairs = [encode_pair(tok, fmt.prompt_text(e), fmt.target_text(e)) for e in corpus]
    corpus_tokens = sum(len(p) + len(tg) - 1 for p, tg in pairs)  # predicted tokens (not BOS)
    t["tokenizer"] = time.perf_counter() - t0

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical weights need a fixed reduction order
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = LlamaForCausalLM(llama_config(cfg, tok))
            n_params = sum(p.numel() for p in model.parameters())
            if corpus_tokens * cfg.epochs < n_params:
                raise ConfigError(
                    f"the corpus is too small for the model: {corpus_tokens} tokens "
                    f"x {cfg.epochs} epochs < {n_params} parameters, so it would memorize "
                    "the corpus rather than learn the skills; raise corpus_size or epochs, "
                    "or shrink hidden/layers",
                    source="organism",
                )
            t0 = time.perf_counter()
            _pretrain(model, pairs, cfg, tok.pad_token_id, progress, np, torch, progress_bar)
            t["training"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(n_threads)

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)

    atomic_write_json(
        out / "organism.json",
        {
            "settings": asdict(cfg),
            "build_version": BUILD_VERSION,
            "parameters": n_params,
            "vocab": len(tok),
            "corpus_problems": len(corpus),
            "corpus_tokens": corpus_tokens,
        },
    )
    t["saving"] = time.perf_counter() - t0
    return out


def _pretrain(model, pairs, cfg: OrganismConfig, pad_id: int, progress: bool, np, torch, tqdm) -> None:
    """Teacher-forced next-token loss on every token of each problem (question and answer: the
    model learns the language of the questions, which the verbose targets reuse); AdamW, linear
    warm-up and decay."""
    rng = np.random.default_rng([cfg.seed, 0x0A6])
    steps_per_epoch = -(-len(pairs) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)) * max(0.0, 1 - s / total)
    )
    model.train()
    bar = tqdm(total=total, desc="pretraining organism", unit="step", disable=not progress)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(pairs))
        for s in range(steps_per_epoch):
            batch = [pairs[i] for i in order[s * cfg.batch_size : (s + 1) * cfg.batch_size]]
            width = max(len(p) + len(t) for p, t in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (p, t) in enumerate(batch):
                seq = p + t
                ids[r, : len(seq)] = torch.tensor(seq)
                labels[r, 1 : len(seq)] = torch.tensor(seq[1:])  # BOS is never predicted
                mask[r, : len(seq)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()


# ---------------------------------------------------------------- cache


def organism_dir(spec: str = ALIAS, progress: bool = True, echo: Callable[[str], Any] | None = None) -> Path:
    """The directory of the organism ``spec`` names, built first if it is not cached.

    With the cache off (``CURATOR_CACHE=off``) it is built into a fresh temporary directory.
    """

    cfg = parse_spec(spec)
    root = cache_dir()
    if root is None:
        return build(cfg, tempfile.mkdtemp(prefix="curator-organism-"), progress=progress)
    final = root / f"{ALIAS}-{cfg.key()}"
    if (final / "organism.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    if echo:
        echo(f"building the model organism ({spec}) into {final}; later runs load it from there")
    with atomic_path(final, directory=True, keep_existing=True) as tmp:  # another process finished first: use theirs
        build(cfg, tmp, progress=progress)
    return final


def weights_hash(model: Any) -> str:
    """sha256 over every parameter's name and exact bytes (the bit-identity check)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
