"""The routing monitors' validation run (`curate routing`, docs/ROUTING.md): train a small MoE from
scratch on synthetic problems, record routing, loss and accuracy at every checkpoint, then plot
and report whether pathway distance and consistency track test accuracy.

A driver over the library: the monitors themselves are `curator.dynamics.routing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.analysis.predict import Run, _fig, write_run
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.data.synthetic import synthetic_task
from curator.dynamics.ledger import Ledger
from curator.dynamics.routing import RoutingMonitor, RoutingSettings, routing_metrics
from curator.evaluation import grade_completions
from curator.models.moe import small_moe
from curator.models.tiny import tiny_tokenizer
from curator.sampling.base import SamplingParams
from curator.sampling.hf import HFSampler
from curator.training import TrainSettings, finetune


@dataclass(frozen=True)
class ValidationSettings:
    """The reproducible validation run of `curate routing` (docs/ROUTING.md)."""

    n_train: int = 64
    n_test: int = 64
    preset: str = "easy"
    epochs: int = 100
    learning_rate: float = 3e-3
    batch_size: int = 16
    checkpoint_every: int = 40
    max_new_tokens: int = 280  # the longest easy target is 270 characters
    seed: int = 0
    routing: RoutingSettings = field(default_factory=RoutingSettings)


def routing_validation(
    out_dir: Any, settings: ValidationSettings | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train the small MoE (`curator.models.moe.small_moe`) from scratch on synthetic problems and
    record, at every checkpoint: pathways and consistency of the training examples, their target
    NLL and greedy correctness (the ledger), and greedy test accuracy and test NLL.

    Writes a run directory that `curate predict` reads (ledger.parquet with the routing columns,
    checkpoints.csv), ``routing.csv`` (per-checkpoint routing metrics, memorized-only and all),
    ``routing.png`` and ``report.md``. Returns the paths and the correlation table.
    """
    import torch  # heavy: only the run itself needs it

    s = settings or ValidationSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = _problems(s)
    tok = tiny_tokenizer()
    torch.manual_seed(s.seed)
    model = small_moe(s.seed, tok)
    rec = _Recorder(train, test, tok, s)
    rec.monitor.check(model)
    ts = TrainSettings(
        epochs=s.epochs,
        learning_rate=s.learning_rate,
        batch_size=s.batch_size,
        checkpoint_every=s.checkpoint_every,
        warmup_ratio=0.05,
        seed=s.seed,
        track_grad_variance=False,
        max_length=1024,
    )
    finetune(model, tok, train, rec.fmt, ts, on_checkpoint=rec, progress=progress)

    tab = pd.DataFrame(rec.per_checkpoint)
    ledger = rec.ledger(tab)
    mem = routing_metrics(ledger, s.routing)
    every = routing_metrics(ledger, RoutingSettings(**{**s.routing.__dict__, "memorized_only": False}))
    tab["pathway_distance"] = mem["pathway_distance"].to_numpy()
    tab["pathway_consistency"] = mem["pathway_consistency"].to_numpy()
    write_run(Run("small-moe", ledger, tab, meta={"settings": repr(s)}), out)
    both = mem.merge(every, on="checkpoint", suffixes=("", "_all")).merge(
        tab[["checkpoint", "step", "epoch", "test_accuracy", "test_nll", "train_loss"]], on="checkpoint"
    )
    both.to_csv(out / "routing.csv", index=False)
    corr = write_validation_report(out, repr(s))
    return {"dir": out, "table": both, "correlations": corr}


def _problems(s: ValidationSettings) -> tuple[list[Example], list[Example]]:
    """The training problems, and test problems of the same preset that are not among them."""
    task = synthetic_task(s.preset)
    train = task.generate(s.n_train, seed=s.seed)
    seen = {e.id for e in train}
    test = [e for e in task.generate(s.n_test + s.n_train, seed=s.seed + 10_000) if e.id not in seen][: s.n_test]
    return train, test


class _Recorder:
    """The ``on_checkpoint`` callback: routing of the training set (the monitor), its target NLL and
    greedy correctness (the ledger's cells), and test accuracy and test NLL per checkpoint."""

    def __init__(self, train: list[Example], test: list[Example], tok: Any, s: ValidationSettings):
        self.train, self.test, self.tok, self.settings = train, test, tok, s
        self.fmt = PromptFormat()
        self.grader = get_grader("gsm8k")
        self.monitor = RoutingMonitor(train, tok, self.fmt, cutoff=s.routing.cutoff, batch_size=32)
        self.greedy = SamplingParams(temperature=0.0, max_new_tokens=s.max_new_tokens)
        self.train_pairs = self.fmt.pairs(train, tok)
        self.test_pairs = self.fmt.pairs(test, tok)
        self.cells: dict[str, list[Any]] = {"nll": [], "tokens": [], "correct": []}
        self.per_checkpoint: list[dict[str, Any]] = []

    def __call__(self, m: Any, info: Any) -> None:
        self.monitor(m, info)
        sampler = HFSampler(m, self.tok, batch_size=96)
        (tr_prompts, tr_targets), (te_prompts, te_targets) = self.train_pairs, self.test_pairs
        nll, ntok = sampler.target_nll(tr_prompts, tr_targets)
        test_nll, _ = sampler.target_nll(te_prompts, te_targets)
        tr_out = sampler.generate(tr_prompts, 1, self.greedy)
        te_out = sampler.generate(te_prompts, 1, self.greedy)
        self.cells["nll"].append(nll)
        self.cells["tokens"].append(ntok)
        self.cells["correct"].append([int(self.grader.is_correct(c[0], e.answer)) for c, e in zip(tr_out, self.train)])
        self.per_checkpoint.append(
            {
                "checkpoint": info.index,
                "step": info.step,
                "epoch": info.epoch,
                "test_accuracy": grade_completions(self.test, te_out, self.grader).accuracy,
                "test_nll": float(np.mean(test_nll)),
                "train_loss": float(np.mean(nll)),
            }
        )

    def ledger(self, tab: pd.DataFrame) -> Ledger:
        """The training set's ledger (k = 1 greedy sample per checkpoint) with the routing columns."""
        r = self.settings.routing
        return Ledger.from_arrays(
            [e.id for e in self.train],
            np.stack(self.cells["correct"], 1),
            k=1,
            target_nll=np.stack(self.cells["nll"], 1),
            target_tokens=np.stack(self.cells["tokens"], 1),
            steps=tab["step"].tolist(),
            epochs=tab["epoch"].tolist(),
            p=float(math.exp(r.epsilon)),
            signals=self.monitor.columns(),
            model="small_moe (mixtral, from scratch)",
            source="curate routing",
            routing={"cutoff": r.cutoff, "epsilon": r.epsilon, "delta": r.delta, "memorized_only": r.memorized_only},
        )


def write_validation_report(out_dir: Any, settings: str = "") -> pd.DataFrame:
    """``report.md`` and ``routing.png`` from a validation run's ``routing.csv``; the correlations."""
    out = Path(out_dir)
    table = pd.read_csv(out / "routing.csv")
    corr = correlations(table)
    _plot_validation(table, out / "routing.png")
    (out / "report.md").write_text(_validation_report(table, corr, settings))
    return corr


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of each monitor with test accuracy and test NLL across checkpoints, with a 95%
    interval (Fisher z; checkpoints of one run are not independent, so it is optimistic)."""
    rows = []
    for metric in (
        "pathway_distance",
        "pathway_consistency",
        "pathway_distance_all",
        "pathway_consistency_all",
        "train_loss",
    ):
        row: dict[str, Any] = {"metric": metric}
        for target in ("test_accuracy", "test_nll"):
            x, y = table[metric].to_numpy(float), table[target].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            n = int(ok.sum())
            r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if n >= 3 and x[ok].std() > 0 and y[ok].std() > 0 else math.nan
            half = 1.96 / math.sqrt(n - 3) if n > 3 else math.nan
            z = math.atanh(max(min(r, 0.999999), -0.999999)) if np.isfinite(r) else math.nan
            row[f"r_{target}"] = r
            row[f"ci_{target}"] = (
                f"[{math.tanh(z - half):.2f}, {math.tanh(z + half):.2f}]"
                if np.isfinite(z) and np.isfinite(half)
                else "-"
            )
        row["n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_validation(t: pd.DataFrame, path: Any) -> None:
    fig = _fig(1, 3, size=(13.0, 3.8))
    final = int(t["n_memorized"].iloc[-1])
    half = t.loc[t["n_memorized"] >= max(final, 1) / 2, "step"]
    onset = float(half.iloc[0]) if final and len(half) else None  # half the memorized set memorized
    ax = fig.add_subplot(131)
    for col, lab in (("pathway_distance", "memorized samples"), ("pathway_distance_all", "all samples")):
        se = t.get(col.replace("distance", "distance_se"), None)
        ax.errorbar(t["step"], t[col], yerr=None if se is None else 2 * se, marker="o", ms=3, label=lab)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean pathway edit distance")
    ax.legend(fontsize=7)
    ax.set_title("pathway distance", fontsize=9)
    ax = fig.add_subplot(132)
    ax.plot(t["step"], t["pathway_consistency"], marker="o", ms=3, label="memorized samples")
    ax.plot(t["step"], t["pathway_consistency_all"], marker="o", ms=3, label="all samples")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("1 - C_i (higher = steadier)")
    ax.legend(fontsize=7)
    ax.set_title("pathway consistency", fontsize=9)
    ax = fig.add_subplot(133)
    ax.plot(t["step"], t["train_loss"], marker="o", ms=3, label="train loss (nats)")
    ax.plot(t["step"], t["test_nll"], marker="o", ms=3, label="test loss (nats)")
    ax2 = ax.twinx()
    ax2.plot(t["step"], t["test_accuracy"], color="C3", marker="s", ms=3, label="test accuracy")
    ax2.plot(
        t["step"],
        t["n_memorized"] / max(int(t["n_routing_samples_all"].max()), 1),
        color="C4",
        ls="--",
        label="fraction memorized",
    )
    ax2.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="upper right")
    ax.set_title("loss, test accuracy, memorization", fontsize=9)
    if onset is not None:
        for a in fig.axes:
            a.axvline(onset, color="grey", ls=":", lw=1)
        fig.axes[0].text(onset, fig.axes[0].get_ylim()[1], " half memorized", fontsize=7, va="top", color="grey")
    fig.tight_layout()
    fig.savefig(path)


def _validation_report(t: pd.DataFrame, corr: pd.DataFrame, settings: str) -> str:
    cols = [
        "checkpoint",
        "step",
        "train_loss",
        "test_nll",
        "test_accuracy",
        "n_memorized",
        "n_routing_samples",
        "pathway_distance",
        "pathway_distance_se",
        "pathway_consistency",
        "pathway_distance_all",
        "pathway_consistency_all",
    ]
    lines = [
        "# Routing monitors on a small MoE trained from scratch",
        "",
        f"Settings: `{settings}`",
        "",
        "## Per checkpoint",
        "",
        _markdown(t[cols], ".4g"),
        "",
        "## Pearson r across checkpoints (single seed: a smoke test, not a claim)",
        "",
        _markdown(corr, ".3f"),
        "",
        "![routing](routing.png)",
        "",
    ]
    return "\n".join(lines)


def _markdown(df: pd.DataFrame, fmt: str) -> str:
    def cell(v: Any) -> str:
        return format(v, fmt) if isinstance(v, (float, np.floating)) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])
