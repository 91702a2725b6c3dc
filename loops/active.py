"""The active curation loop (DESIGN §4): train -> measure -> log -> select -> grow.

Uses only curator's public API, as a third-party loop would. Durable state lives in the run
directory, one folder per strategy (``<run_dir>/<strategy>/run.json``: the MLflow run id, written
before anything is logged) holding its rounds; the round layout is defined once, in
``curator/rounds.py`` (``RoundStore``), which ``curate compare`` and ``curate export`` read too.

A killed run is resumed by running the same command: finished rounds are read back, a half-done
round is redone from its start (training is seeded, so the result is the same), and MLflow
metrics already logged for a step are not logged again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from curator.console import echo
from curator.data.example import Example
from curator.distributed import check_same_on_every_rank, is_main_process
from curator.errors import CuratorError, StrategyError
from curator.io import atomic_write_json, read_json
from curator.recipes import StrategySpec
from curator.rounds import MLFLOW_ARTIFACTS, RESOLVED_RECIPE, STRATEGY_RUN, TRAINABLE_STATE, RoundStore
from curator.signals import Signals
from curator.strategy import SelectionContext, build_strategy, run_selection
from curator.tracking.mlflow_store import MlflowRun, flatten


def fault_point(name: str) -> None:
    """Crash-test hook: ``CURATOR_FAULT=<name>`` kills the process here with SIGKILL (only the rank
    ``CURATOR_FAULT_RANK`` under a multi-process launch, when set).

    Points: ``round<r>:trained`` (model trained, nothing written), ``round<r>:selected`` (selection
    made, not written), ``round<r>:done`` (round written, not yet logged to MLflow)."""
    only = os.environ.get("CURATOR_FAULT_RANK")
    if os.environ.get("CURATOR_FAULT") == name and (only is None or only == os.environ.get("RANK", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


class ActiveLoop:
    """One strategy's run through the rounds of a recipe."""

    def __init__(self, ws, spec: StrategySpec):
        self.ws = ws
        self.recipe = ws.recipe
        self.spec = spec
        self.strategy = build_strategy(spec.name, spec.params)
        self.dir = ws.run_dir / spec.run_name
        self.store = RoundStore(self.dir)
        self.done = False
        self.train_ids: list[str] = list(ws.seed_ids)
        self.examples: dict[str, Example] = ws.examples_by_id()
        self.history: list[dict[str, Any]] = []
        self.stopped_reason: str | None = None
        self.mlflow: MlflowRun | None = None
        # under `accelerate launch` every rank trains, measures and selects alike; one writes
        self.main = is_main_process()
        self._model_state: dict | None = None  # trainable weights carried over (continue_training)
        hold_out = getattr(ws.source, "hold_out", None)
        if hold_out is not None:  # a generator must never make a test question
            hold_out(ws.test)

    # ---- durable state -------------------------------------------------------------------
    def round_dir(self, r: int) -> Path:
        return self.store.round_dir(r)

    def setup(self) -> None:
        if not self.main:
            self._replay()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mlflow = MlflowRun(
            self.ws.tracking_uri, self.recipe.experiment, artifact_root=self.ws.run_dir / MLFLOW_ARTIFACTS
        )
        meta_path = self.dir / STRATEGY_RUN
        meta = read_json(meta_path) if meta_path.exists() else {}
        tags = {
            "strategy": self.spec.name,
            "strategy_label": self.spec.run_name,
            "seed": str(self.recipe.seed),
            "recipe": self.recipe.name,
            "curator.run_dir": str(self.dir),
        }
        spec = {"name": self.spec.name, "params": dict(self.spec.params)}
        if meta.get("spec") not in (None, spec) and self.store.is_done(0):
            raise CuratorError(
                f"{self.dir} has finished rounds of strategy {meta['spec']}, but the recipe now "
                f"gives {spec} for run {self.spec.run_name!r}; give it another 'label' "
                "or a new output_dir"
            )
        run_id = self.mlflow.open(
            meta.get("mlflow_run_id"), self.spec.run_name, params=flatten(self.recipe.to_dict()), tags=tags
        )
        if meta.get("mlflow_run_id") != run_id or meta.get("spec") != spec:
            atomic_write_json(meta_path, {"mlflow_run_id": run_id, "strategy": self.spec.name, "spec": spec})
        self._replay()

    def _replay(self) -> None:
        """Read finished rounds back (every rank); the main process also logs any not yet logged."""
        r = 0
        while self.store.is_done(r):
            for e in self.store.new_examples(r):
                self.examples[e.id] = e
            metrics = self.store.metrics(r)
            self.history.append(metrics)
            # a store made anew (another tracking.uri, a rebuilt or deleted store) gets every round again
            if self.mlflow is not None and (self.mlflow.created or not self.store.is_logged(r)):
                self._log_round(r, metrics)
            self.train_ids = self.store.next_train_ids(r)
            if metrics.get("stopped_reason"):
                self.stopped_reason = metrics["stopped_reason"]
                self.done = True
            r += 1
        self.next_round = r
        if r >= self.recipe.loop.rounds:
            self.done = True
        if self.done and self.mlflow is not None:
            self.mlflow.finish()  # reopened to check the log; a finished run stays FINISHED
        if self.recipe.loop.continue_training and r > 0 and not self.done:
            state_file = self.store.path(r - 1, TRAINABLE_STATE)
            import torch

            # weights only: a crafted pickle in a run directory must not run code
            try:
                self._model_state = torch.load(state_file, map_location="cpu", weights_only=True)
            except Exception as e:  # missing, truncated, or not plain tensors
                raise CuratorError(
                    f"{state_file} cannot be read as saved weights ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:160]}); delete {self.round_dir(r - 1)} to redo "
                    "that round"
                ) from None

    def save_state(self) -> None:
        # every round's files are written atomically inside run_round; nothing is held in memory only
        return None

    # ---- one round ---------------------------------------------------------------------------
    def _dynamics_params(self, seed: int):
        """Sampling settings of the dynamics measurement (also used for sampled-answer signals)."""
        return self.recipe.dynamics.sampling(self.recipe.format.stop, seed)

    def _train_and_measure(self, r: int, train: list[Example]):
        from curator.engine import ModelStart, TestEval, train_and_track  # lazy: pulls in pandas

        rec = self.recipe
        dyn, ev = rec.dynamics, rec.evaluation
        res = train_and_track(
            self.ws.base,
            train,
            fmt=rec.format,
            grader=self.ws.grader,
            training=rec.training,
            provider=self.ws.provider,
            measure=dyn.measure_settings(rec.format.stop, seed=rec.seed + r),
            start=ModelStart(lora=rec.model.lora, seed=rec.seed, init_state=self._model_state),
            test=TestEval(self.ws.test, ev.sampling(rec.format.stop, rec.seed, top_p=dyn.top_p), ev.samples),
            progress=self.ws.progress,
        )
        return {
            "model": res.model,
            "ledger": res.ledger,
            "test_accuracy": res.test_accuracy,
            "checkpoints": res.checkpoints,
            "train_seconds": res.train_seconds,
            "signals": None,
        }

    def _signals(self, entry):
        if entry["signals"] is None:
            rec = self.recipe
            dyn = rec.dynamics
            params = self._dynamics_params(seed=rec.seed)
            entry["signals"] = Signals(
                model=entry["model"],
                tokenizer=self.ws.base.tokenizer,
                sampler=self.ws.provider.sampler(entry["model"]),
                grader=self.ws.grader,
                fmt=rec.format,
                sampling=params,
                n_answers=dyn.samples,
                batch_size=dyn.batch_size,
                max_length=rec.training.max_length,
            )
        return entry["signals"]

    def run_round(self, r: int) -> None:
        if self.done or r < self.next_round:
            return
        rec = self.recipe
        t0 = time.time()
        if self.main:
            self.store.start(r)
        train = [self.examples[i] for i in self.train_ids]
        key = self.ws.cache.key(self.train_ids, r, rec.loop.continue_training, owner=self.spec.run_name)
        entry = self.ws.cache.entries.get(key)
        if entry is None:
            entry = self._train_and_measure(r, train)
            self.ws.cache.entries[key] = entry
        fault_point(f"round{r}:trained")
        ledger = entry["ledger"]
        if self.main:
            self.store.write_ledger(r, ledger)
        metrics = self._round_metrics(r, train, entry, ledger)
        new_ids: list[str] = []
        new_examples: list[Example] = []
        if r < rec.loop.rounds - 1:
            new_ids, new_examples = self._select_next(r, train, entry, ledger, metrics)
        metrics["round_seconds"] = time.time() - t0
        self._finish_round(r, entry, metrics, self.train_ids + new_ids, new_examples)

    def _round_metrics(self, r: int, train: list[Example], entry: dict, ledger: Any) -> dict[str, Any]:
        """The round's metrics.json values known once its model is trained and measured."""
        from curator.dynamics.metrics import summary as ledger_summary  # lazy: pulls in pandas

        last = ledger_summary(ledger, self.recipe.dynamics.p).iloc[-1]
        return {
            "round": r,
            "n_train": len(train),
            "test_accuracy": entry["test_accuracy"],
            "premem_acc": float(last["premem_acc"]),
            # lazy tracking can leave the final train accuracy known only within bounds
            "train_accuracy": float(last["train_acc"]),
            "train_accuracy_lo": float(last["train_acc_lo"]),
            "train_accuracy_hi": float(last["train_acc_hi"]),
            "fraction_memorized": float(last["fraction_memorized"]),
            "train_loss": float(entry["checkpoints"][-1].get("train_loss", float("nan")))
            if entry["checkpoints"]
            else float("nan"),
            "train_seconds": entry["train_seconds"],
        }

    def _select_next(
        self, r: int, train: list[Example], entry: dict, ledger: Any, metrics: dict[str, Any]
    ) -> tuple[list[str], list[Example]]:
        """The strategy's choice of round r + 1's new examples (their ids, and those a generator
        made); notes on the selection go into ``metrics``."""
        rec = self.recipe
        budget = rec.loop.budget_for(r, seed_size=len(self.ws.seed_ids))  # '2x' = twice the seed set
        # never offer a training or test example as a candidate (a generator can remake them)
        excluded = set(self.train_ids) | self.ws.test_ids
        pool = [e for e in self.ws.source.candidates() if e.id not in excluded]
        for e in pool:
            self.examples.setdefault(e.id, e)
        if not pool:
            metrics["stopped_reason"] = "the pool is exhausted"
            return [], []
        ctx = SelectionContext(
            pool=pool,
            train=train,
            ledger=ledger,
            signals=self._signals(entry),
            rng=np.random.default_rng([rec.seed, r, 0xC0FFEE]),
            round=r,
            p=rec.dynamics.p,
            source=self.ws.source,
        )
        t_sel = time.time()
        try:
            sel = run_selection(self.strategy, ctx, budget)
        except CuratorError:
            raise
        except Exception as e:  # a plugin's bug: name the strategy, keep the round undone
            raise StrategyError(f"strategy {self.spec.name!r} failed in round {r}: {type(e).__name__}: {e}") from e
        fault_point(f"round{r}:selected")
        metrics["select_seconds"] = time.time() - t_sel
        by_id = {e.id: e for e in ctx.pool}
        # examples a generator made are not in the fixed pool: keep them for resuming
        fixed = self.ws.pool_ids
        new_examples = [by_id[i] for i in sel.ids if i not in fixed]
        for i in sel.ids:
            self.examples[i] = by_id[i]
        new_ids = list(sel.ids)
        check_same_on_every_rank(new_ids, f"selection of round {r} ({self.spec.run_name})")
        if self.main:
            self._write_selection(r, ctx, sel)
        if sel.note:
            metrics["selection_note"] = sel.note
        if len(sel.ids) < budget:
            # run_selection refused a strategy's shortfall, so the pool ran out: the next
            # round still trains on this final selection, and stops when nothing is left
            ran_out = f"the pool ran out: round {r} could add only {len(sel.ids)} of {budget} examples"
            metrics["selection_note"] = "; ".join(x for x in (sel.note, ran_out) if x)
        return new_ids, new_examples

    def _finish_round(
        self, r: int, entry: dict, metrics: dict[str, Any], next_ids: list[str], new_examples: list[Example]
    ) -> None:
        """Write the round's files (DONE last), log it, and move the loop on to round r + 1."""
        rec = self.recipe
        if self.main:
            self.store.write_round_outputs(r, next_ids, entry["checkpoints"], new_examples)
        if rec.loop.continue_training and r < rec.loop.rounds - 1:
            # before DONE: a finished round must always have the weights the next one starts from
            state = {n: p.detach().cpu() for n, p in entry["model"].named_parameters() if p.requires_grad}
            if self.main:
                self.store.write_trainable_state(r, state)
            self._model_state = state
        if self.main:
            self.store.finish(r, metrics)  # metrics.json, then DONE
        fault_point(f"round{r}:done")  # finished, not yet in MLflow
        self.history.append(metrics)
        self._log_round(r, metrics)
        self.train_ids = next_ids
        self.next_round = r + 1
        self._print_round(r, metrics)
        if metrics.get("stopped_reason"):
            self.stopped_reason = metrics["stopped_reason"]
            self.done = True
        elif r + 1 >= rec.loop.rounds:
            self.done = True
        if self.done and self.mlflow is not None:
            self.mlflow.finish()

    def _write_selection(self, r: int, ctx, sel) -> None:
        import pandas as pd

        chosen = {i: rank for rank, i in enumerate(sel.ids)}
        rows = [
            {
                "example_id": e.id,
                "score": float(sel.scores.get(e.id, float("nan"))),
                "selected": e.id in chosen,
                "rank": chosen.get(e.id, -1),
            }
            for e in ctx.pool
        ]
        df = pd.DataFrame(rows)
        self.store.write_selection(r, df)

    def _log_round(self, r: int, metrics: dict[str, Any]) -> None:
        if self.mlflow is None:  # not the main process
            return
        step = int(metrics["n_train"])
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n_train"
        }
        self.mlflow.log_metrics(numeric, step=step)
        # self.train_ids is still this round's training set S_r (both callers advance it afterwards)
        self.mlflow.log_training_set(f"{self.spec.run_name} round {r}", self.train_ids, str(self.round_dir(r)))
        for path in self.store.artifacts(r):
            self.mlflow.log_artifact(path, f"rounds/{path.parent.name}")
        if r == 0:
            self.mlflow.log_artifact(self.ws.run_dir / RESOLVED_RECIPE)
        self.store.mark_logged(r)

    def _print_round(self, r: int, m: dict[str, Any]) -> None:
        if not self.main or (not self.ws.progress and os.environ.get("CURATOR_QUIET")):
            return
        acc = m["train_accuracy"]
        train_acc = f"{acc:.3f}" if acc == acc else f"[{m['train_accuracy_lo']:.3f},{m['train_accuracy_hi']:.3f}]"
        echo(
            f"[{self.spec.run_name}] round {r}: n={m['n_train']} test_acc={m['test_accuracy']:.3f} "
            f"premem={m['premem_acc']:.3f} train_acc={train_acc} "
            f"memorized={m['fraction_memorized']:.2f} ({m['round_seconds']:.0f}s)"
        )

    # ---- end of run ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "rounds": len(self.history),
            "stopped_reason": self.stopped_reason,
            "final": self.history[-1] if self.history else None,
            "mlflow_run_id": self.mlflow.run_id if self.mlflow else None,
        }

    def log_final_artifacts(self, compare_result) -> None:
        if self.mlflow is None:
            return
        for path in (compare_result.png, compare_result.table_path):
            if path is not None and Path(path).exists():
                self.mlflow.log_artifact(path, "compare")
