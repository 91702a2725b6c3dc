"""Curated sets out of curator as `datasets` datasets that TRL trains on (`curate export`).

`trl_dataset(examples, fmt)` turns Examples into the columns TRL's `SFTTrainer` reads:
``prompt`` / ``completion`` (the exact prompt and target text curator trains and measures on),
or ``messages`` (user / assistant turns) with ``chat=True``; the Example fields ride along.

`export_selection(run_dir, ...)` reads a `curate run` directory (layout in loops/active.py):
the training set that round r of a strategy chose — ``round-NN/next_train_ids.json``, i.e.
S_{r+1} — with each example's PreMemAcc from the round's ledger (NaN for examples not yet
trained on), the selection score and the round that selected it (-1: the seed set). Only a
finished round (``DONE`` marker) is exported; output is written to a temporary path and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.data import loaders
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.loaders import load_examples
from curator.errors import ConfigError, CuratorError, DataError
from curator.io import atomic_path
from curator.measure import check_ledger_matches
from curator.rounds import LEDGER, RESOLVED_RECIPE, SELECTION, RoundStore, read_seed_ids, resolved_recipe_file

FORMATS = ("jsonl", "parquet", "disk")


def trl_dataset(
    examples: Sequence[Example],
    fmt: PromptFormat | None = None,
    *,
    chat: bool = False,
    columns: dict[str, Sequence[Any]] | None = None,
):
    """A `datasets.Dataset` in a layout TRL's SFTTrainer reads.

    Args:
        fmt: prompt/target templates (curator's defaults if None). Prompts are the template text
            without any chat wrapping: with ``chat=True`` the trainer's chat template does that.
        chat: ``messages`` column (``[{"role": "user", ...}, {"role": "assistant", ...}]``)
            instead of ``prompt`` / ``completion``.
        columns: extra columns, aligned with ``examples`` (e.g. ``premem_acc``, ``score``).
    """
    import datasets

    fmt = dataclasses.replace(fmt or PromptFormat(), chat=False)
    rows: dict[str, list[Any]] = {"id": [e.id for e in examples]}
    prompts = [fmt.prompt_text(e) for e in examples]
    targets = [fmt.target_text(e) for e in examples]
    if chat:
        rows["messages"] = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": t}] for p, t in zip(prompts, targets)
        ]
    else:
        rows["prompt"], rows["completion"] = prompts, targets
    rows["question"] = [e.question for e in examples]
    rows["solution"] = [e.solution for e in examples]
    rows["answer"] = [e.answer for e in examples]
    for name, values in (columns or {}).items():
        if len(values) != len(examples):
            raise DataError(f"column {name!r} has {len(values)} values for {len(examples)} examples")
        rows[name] = list(values)
    return datasets.Dataset.from_dict(rows)


@dataclass
class ExportResult:
    path: Path | None
    n_examples: int
    strategy: str
    round: int
    hub_repo: str | None = None


def _strategy_dir(run_dir: Path, strategy: str | None) -> tuple[RoundStore, Path]:
    """(the strategy's round store, the run's resolved recipe file)."""
    labels = (
        sorted(d.name for d in run_dir.iterdir() if d.is_dir() and RoundStore(d).round_dir(0).is_dir())
        if run_dir.is_dir()
        else []
    )
    recipe_file = resolved_recipe_file(run_dir)
    if recipe_file is None:
        raise DataError(
            f"{run_dir}: not a `curate run` directory (no {RESOLVED_RECIPE} or recipe.yaml); give the run's output_dir"
        )
    if strategy is None:
        if len(labels) != 1:
            raise ConfigError(
                f"{run_dir} holds runs of {len(labels)} strategies ({', '.join(labels) or 'none'}); "
                "choose one with --strategy"
            )
        strategy = labels[0]
    if strategy not in labels:
        raise ConfigError(f"{run_dir} has no rounds of strategy {strategy!r}; available: {', '.join(labels) or 'none'}")
    return RoundStore(run_dir / strategy), recipe_file


def _round_dir(store: RoundStore, round_: int | None) -> tuple[int, Path]:
    done = store.finished()
    if round_ is None:
        if not done:
            raise DataError(
                f"{store.dir}: no round has finished yet (no round-NN/DONE); let `curate run` finish "
                "round 0 (rerun it to resume) before exporting"
            )
        round_ = done[-1]
    rd = store.round_dir(round_)
    if not rd.is_dir():
        raise ConfigError(f"{rd} does not exist; finished rounds: {', '.join(map(str, done)) or 'none'}")
    if not store.is_done(round_):
        raise DataError(
            f"{rd}: round {round_} has not finished (no DONE marker); rerun `curate run` to finish "
            f"it, or export a finished round ({', '.join(map(str, done)) or 'none yet'})"
        )
    return round_, rd


def selected_training_set(
    run_dir: str | os.PathLike, strategy: str | None = None, round: int | None = None, *, only_new: bool = False
):
    """(examples, columns, recipe, strategy label, round) of a run's selection (module docstring)."""
    import numpy as np
    import pandas as pd

    from curator.dynamics.ledger import read_ledger  # lazy: pulls in numpy, pandas
    from curator.dynamics.metrics import premem_acc  # lazy: pulls in numpy, pandas
    from curator.recipes import load_recipe  # lazy: pulls in numpy, yaml

    run_dir = Path(run_dir)
    store, recipe_file = _strategy_dir(run_dir, strategy)
    r, rd = _round_dir(store, round)
    recipe = load_recipe(recipe_file)
    d = recipe.data
    by_id = {
        e.id: e
        for e in load_examples(
            d.pool, config=d.pool_config, split=d.pool_split, fields=d.fields or None, limit=d.pool_size
        )
    }
    selected_in: dict[str, int] = {}
    score: dict[str, float] = {}
    for j in range(r + 1):
        for e in store.new_examples(j):
            by_id[e.id] = e
        if store.path(j, SELECTION).exists():
            sel = pd.read_parquet(store.path(j, SELECTION))
            for row in sel[sel["selected"]].itertuples():
                selected_in[row.example_id] = j
                score[row.example_id] = float(row.score)
    train_ids = read_seed_ids(run_dir) if r == 0 else store.next_train_ids(r - 1)
    ids = store.next_train_ids(r)
    if only_new:
        ids = [i for i in ids if selected_in.get(i) == r]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(
            f"{rd}: {len(missing)} selected example(s) are not in the recipe's pool ({d.pool}) or the "
            f"run's new_examples.jsonl (e.g. {missing[0]!r}); was the pool changed after the run?"
        )
    ledger = read_ledger(store.path(r, LEDGER))
    check_ledger_matches(ledger, [by_id[i] for i in train_ids if i in by_id], str(store.path(r, LEDGER)))
    final = premem_acc(ledger, recipe.dynamics.p).iloc[:, -1]
    examples = [by_id[i] for i in ids]
    columns = {
        "premem_acc": [float(final.get(i, np.nan)) for i in ids],
        "score": [score.get(i, float("nan")) for i in ids],
        "selected_round": [selected_in.get(i, -1) for i in ids],
    }
    return examples, columns, recipe, store.dir.name, r


def export_selection(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    strategy: str | None = None,
    round: int | None = None,
    format: str | None = None,
    chat: bool = False,
    only_new: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = True,
) -> ExportResult:
    """Write a run's selected training set as a dataset (and/or push it to the hub).

    ``format``: ``jsonl``, ``parquet`` or ``disk`` (``save_to_disk``); default from ``out``'s
    suffix (a path without .jsonl/.parquet is a save_to_disk directory).

    Raises:
        CuratorError: unknown strategy or round, unfinished round, a ledger that does not match the
            round's training set, an existing ``out`` without ``overwrite``, an unreachable hub.
    """
    if out is None and push_to_hub is None:
        raise ConfigError("give an output path, --push-to-hub REPO, or both")
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        format = format or _format_from_suffix(out_path)
        if format not in FORMATS:
            raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
        if resolved_recipe_file(Path(run_dir)) is not None or any(Path(run_dir).glob("*/round-*")):
            # curator's files are there (a run, or what is left of one); elsewhere the read below says what is wrong
            _refuse_inside_run(out_path, Path(run_dir))
        if out_path.exists() and not overwrite:
            raise ConfigError(f"{out_path} already exists; choose another path or pass --overwrite")
    examples, columns, recipe, label, r = selected_training_set(run_dir, strategy, round, only_new=only_new)
    if not examples:
        raise DataError(f"round {r} of {label} selected no examples to export")
    ds = trl_dataset(examples, recipe.format, chat=chat, columns=columns)
    if out_path is not None:
        write_dataset(ds, out_path, format)
    if push_to_hub is not None:
        push_dataset(ds, push_to_hub, private=private)
    return ExportResult(out_path, len(examples), label, r, push_to_hub)


_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet", "": "disk"}


def _format_from_suffix(out: Path) -> str:
    """The format ``out`` names: .jsonl, .parquet, or no suffix (a save_to_disk directory). Any other
    suffix is refused: ``e.csv`` must not silently become a directory named e.csv."""
    suffix = out.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(
            f"--out {out}: unknown output suffix {out.suffix!r}; write FILE.jsonl, FILE.parquet or a "
            "directory without a suffix (save_to_disk), or choose the format with --format jsonl|parquet|disk"
        )
    return _SUFFIXES[suffix]


def _refuse_inside_run(out: Path, run_dir: Path) -> None:
    """Export never writes into the run directory it reads: with --overwrite it would replace the
    run's own files (its ledger, its round state)."""
    target, run = out.resolve(), run_dir.resolve()
    if target == run or run in target.parents:
        raise ConfigError(
            f"--out {out} is inside the run directory {run_dir}, whose files export reads; "
            "write the dataset somewhere else"
        )


def write_dataset(ds: Any, out: Path, format: str | None) -> None:
    """Write to a temporary sibling of ``out``, then rename: readers never see half a dataset."""
    # an existing ``out`` (overwrite was asked for) is replaced only once the new one is whole
    with atomic_path(out) as tmp:
        if format == "disk":
            ds.save_to_disk(str(tmp))
        elif format == "jsonl":
            # not Dataset.to_json: pandas writes floats with 10 significant digits, and scores
            # must come back exactly; NaN (not valid JSON) becomes null
            with open(tmp, "w", encoding="utf-8") as f:
                for row in ds:
                    f.write(json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
        else:
            ds.to_parquet(str(tmp))


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def push_dataset(ds: Any, repo_id: str, *, private: bool = True) -> None:
    """``Dataset.push_to_hub`` with the failure said in one line (offline, no token, no rights)."""

    problem = loaders._hub_unreachable()
    if problem:
        raise CuratorError(
            f"cannot push to hub dataset {repo_id!r}: the Hugging Face hub is unreachable "
            f"({problem}); export to a local path and upload it later "
            "(`huggingface-cli upload` or Dataset.push_to_hub)"
        )
    try:
        ds.push_to_hub(repo_id, private=private)
    except Exception as e:  # auth, permissions, network: all mean "could not push", said once
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        raise CuratorError(
            f"cannot push to hub dataset {repo_id!r}: {first}; check `huggingface-cli login` "
            "and that you may write to that repo"
        ) from e
