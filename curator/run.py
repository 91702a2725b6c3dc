"""`run_recipe`: everything `curate run` does, as one function call.

It validates the recipe and the tracking store before any model loads, prepares what all strategy
runs share (data, seed set, base model, grader — the `Workspace`), then drives one loop per
strategy round by round. Running the strategies round-major lets identical work be shared: in
round 0 every strategy trains on the same seed set, so that model, its ledger and its signals are
computed once (`RoundCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curator import distributed, readback
from curator.data.example import Example
from curator.data.grading import get_grader
from curator.data.loaders import load_examples, synthetic_task_from_source
from curator.data.sources import GeneratorSource, PoolSource, Source
from curator.errors import ConfigError, CuratorError, DataError
from curator.io import atomic_write_text, read_json
from curator.loop import check_loop_instance, get_loop
from curator.models import load_model
from curator.recipes import Recipe, recipe_from_dict, validate_recipe
from curator.rounds import LEGACY_RECIPE, RESOLVED_RECIPE, STATE_DIR
from curator.sampling.providers import make_provider
from curator.sampling.vllm import check_vllm_ready
from curator.tracking.compare import compare_run_dir
from curator.tracking.mlflow_store import check_reachable, default_tracking_uri, flatten


@dataclass
class RoundCache:
    """Results of training on one exact training set, shared by strategies in the same round."""

    entries: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def key(train_ids: list[str], round_index: int, continued: bool, owner: str = "") -> str:
        # everything training depends on: the ids *in order* (the order the trainer sees them),
        # the round (it seeds the dynamics sampling) and, when training continues from the last
        # round's weights, whose history those weights are
        h = hashlib.sha1(("\n".join(train_ids)).encode()).hexdigest()[:16]
        return f"{h}-r{round_index}" + (f"-{owner}" if continued and round_index > 0 else "")

    def clear(self) -> None:
        self.entries.clear()


@dataclass
class Workspace:
    """What every strategy run of one recipe shares."""

    recipe: Recipe
    run_dir: Path
    tracking_uri: str
    pool: list[Example]
    test: list[Example]
    seed_ids: list[str]
    grader: Any
    source: Any
    cache: RoundCache = field(default_factory=RoundCache)
    progress: bool = True
    _base: Any = None
    _provider: Any = None
    _pool_ids: set[str] | None = None
    _lock: Any = None  # the open, locked run-directory lock file (released when the process ends)

    @property
    def base(self):
        """The base model, loaded once on first use (validation never loads it)."""
        if self._base is None:
            m = self.recipe.model
            self._base = load_model(m.name, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
        return self._base

    @property
    def provider(self):
        """The sampler provider of the whole run (one vLLM engine per process, if vLLM)."""
        if self._provider is None:
            dyn = self.recipe.dynamics
            self._provider = make_provider(
                dyn.backend,
                self.base,
                batch_size=dyn.batch_size,
                vllm=getattr(dyn, "vllm", None),
                lora=self.recipe.model.lora is not None,
            )
        return self._provider

    def close(self) -> None:
        if self._provider is not None:
            self._provider.close()
            self._provider = None

    def release(self) -> None:
        """Free the provider and the run-directory lock (another `curate run` may then use the directory)."""
        self.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def examples_by_id(self) -> dict[str, Example]:
        return {e.id: e for e in self.pool}

    @property
    def pool_ids(self) -> set[str]:
        if self._pool_ids is None:
            self._pool_ids = {e.id for e in self.pool}
        return self._pool_ids

    @property
    def test_ids(self) -> set[str]:
        return {e.id for e in self.test}


@dataclass
class RunSummary:
    run_dir: Path
    tracking_uri: str
    experiment: str
    strategies: dict[str, dict[str, Any]]
    compare_table: str | None = None
    curves_png: Path | None = None


def _load_split(source: str, config: str | None, split: str, size: int | None, fields: dict) -> list[Example]:
    return load_examples(source, config=config, split=split, fields=fields or None, limit=size)


def check_launch(recipe: Recipe) -> None:
    """Fail before any model loads when the recipe cannot run in this launch: vLLM asked for but
    not usable here, or (under ``accelerate launch``) ranks started with different recipes."""

    distributed.init_launch()
    if recipe.dynamics.backend == "vllm":
        check_vllm_ready(recipe.dynamics.vllm)
    distributed.check_same_on_every_rank(recipe.to_dict(), "recipe")


def prepare_workspace(recipe: Recipe, progress: bool = True, store_dir: str | os.PathLike | None = None) -> Workspace:
    """Validate, load data, pick the seed set, check the tracking store. No model is loaded.

    ``store_dir``: the directory whose ``mlflow.db`` is curator's own store when the recipe names
    no tracking.uri (default: the run directory; a multi-seed run passes its top directory, so
    that one store and one experiment hold every seed)."""
    from curator.dynamics.tracker import check_references  # lazy: pulls in pandas

    validate_recipe(recipe)
    check_launch(recipe)
    main = distributed.is_main_process()
    run_dir = recipe.run_dir.resolve()
    # everything that reads the user's inputs runs before anything is written
    d = recipe.data
    grader = get_grader(d.grader)
    pool = _load_split(d.pool, d.pool_config, d.pool_split, d.pool_size, d.fields)
    test = _load_split(d.test, d.test_config, d.test_split, d.test_size, d.fields) if d.test else []
    # the pool's targets must grade as correct, or PreMemAcc would measure the grader
    check_references(pool, grader, recipe.format)
    source: Source
    if d.source == "generator":
        source = GeneratorSource(synthetic_task_from_source(d.pool), pool_size=d.generator_pool_size, seed=recipe.seed)
    else:
        source = PoolSource(pool)
    # the seed set is training data: never a test example (an overlap would inflate test accuracy)
    test_ids = {e.id for e in test}
    eligible = [i for i, e in enumerate(pool) if e.id not in test_ids]
    if d.seed_size > len(eligible):
        shared = f" ({len(pool) - len(eligible)} of them are also in data.test)" if len(eligible) < len(pool) else ""
        raise DataError(
            f"data.seed_size={d.seed_size} is larger than the pool's {len(eligible)} usable examples"
            f"{shared}; lower data.seed_size, use a larger pool, or a test set disjoint from it"
        )
    _check_same_recipe(run_dir, recipe)
    ids_file = run_dir / "seed_ids.json"
    # a resumed run keeps the seed set it started with, even if the code's RNG changed (checked now,
    # before anything is written)
    if (run_dir / STATE_DIR).is_dir():
        _check_same_pool(run_dir, pool, d.pool, record=False)  # a changed pool explains unknown seed ids
    kept_ids = _read_seed_ids(ids_file, recipe, pool) if ids_file.exists() or ids_file.is_symlink() else None
    # under `accelerate launch` every rank has read the run directory before the main one writes;
    # the main process alone holds the lock, checks the store and writes
    distributed.barrier("checking the run directory")
    lock = None
    own_store = Path(store_dir).resolve() if store_dir is not None else run_dir
    uri = recipe.tracking.uri or default_tracking_uri(own_store)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_run_dir(run_dir)
        remove_stray_temporaries(run_dir)  # the lock is held: no live writer owns them
        _check_same_pool(run_dir, pool, d.pool)
        for note in check_reachable(uri, rebuild_for=own_store if recipe.tracking.uri is None else None):
            print(f"note: {note}", flush=True)
    if kept_ids is not None:
        seed_ids = kept_ids
    else:
        rng = np.random.default_rng([recipe.seed, 0x5EED])
        idx = np.sort(rng.choice(len(eligible), size=d.seed_size, replace=False))
        seed_ids = [pool[eligible[i]].id for i in idx]
        if main:
            atomic_write_text(ids_file, json.dumps(seed_ids))
    if main:
        # the resolved recipe is curator's own file: never `recipe.yaml`, which may be the user's
        # recipe when output_dir is the directory it sits in
        atomic_write_text(run_dir / RESOLVED_RECIPE, recipe.to_yaml())
    return Workspace(
        recipe=recipe,
        run_dir=run_dir,
        tracking_uri=uri,
        pool=pool,
        test=test,
        seed_ids=seed_ids,
        grader=grader,
        source=source,
        progress=progress,
        _lock=lock,
    )


def _lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on the run directory for the life of this process (two runs in one
    directory would redo each other's work and log every metric twice). The OS releases it when
    the process ends, killed or not, so a crash never leaves a stale lock.

    The lock is opened without following symlinks and must be a regular file: a planted
    ``.curator/lock -> ~/.bashrc`` would otherwise be truncated."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    state = _state_dir(run_dir)
    path = state / "lock"
    f = _open_state_file(path)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise CuratorError(
            f"{run_dir} is in use by another `curate run` ({holder or 'pid unknown'}; lock {path}); "
            "wait for it to finish, or set another output_dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f


_STATE_FILES = ("lock", "pool.sha1")


def _state_dir(run_dir: Path) -> Path:
    """``<run_dir>/.curator``, made if missing; refused (before anything is written) when it or a
    state file in it is a symlink or not what it should be."""
    state = run_dir / STATE_DIR
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        raise CuratorError(
            f"{state} is not a directory (a symlink or a file); it holds curator's lock and state and "
            "must be a plain directory: remove it, or set another output_dir"
        )
    for name in _STATE_FILES:
        if (state / name).is_symlink():
            raise CuratorError(
                f"{state / name} is a symlink; curator's state files must be regular files (a run would "
                "write through the link): remove it, or set another output_dir"
            )
    state.mkdir(exist_ok=True)
    return state


def _open_state_file(path: Path):
    """Open (creating) a state file for reading and writing, never through a symlink."""
    import stat

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if path.is_symlink():
            raise CuratorError(
                f"{path} is a symlink; curator's state files must be regular files (a link would let a "
                "run write through it): remove it, or set another output_dir"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CuratorError(f"{path} is not a regular file; remove it, or set another output_dir")
    return os.fdopen(fd, "r+")


def _read_state_text(path: Path) -> str:
    """A state file's text, never read through a symlink (O_NOFOLLOW)."""
    if path.is_symlink():
        raise CuratorError(
            f"{path} is a symlink; curator's state files must be regular files: remove it, or set another output_dir"
        )
    return path.read_text(encoding="utf-8", errors="replace")


def _read_seed_ids(path: Path, recipe: Recipe, pool: list[Example]) -> list[str]:
    """The seed set a run started with, checked: a list of distinct pool ids of data.seed_size."""
    fix = f"restore it, or set another output_dir (the finished rounds of {path.parent} started from it)"
    if path.is_symlink():
        raise DataError(f"{path} is a symlink; curator's state files must be regular files; {fix}")
    ids = readback.check_id_list(read_json(path), path, fix=fix)
    known = {e.id for e in pool}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DataError(f"{path} names {len(unknown)} example(s) not in data.pool (e.g. {unknown[0]!r}); {fix}")
    return ids


# temporary files of curator's atomic writes (a name starting with '.', '.tmp' in it): one left
# behind was cut short by a kill; the lock is held when they are removed, so none is live
_TEMPORARY_GLOBS = (".*.tmp*", f"{STATE_DIR}/.*.tmp*", "*/round-*/.*.tmp*", "seed-*/.*.tmp*")


def remove_stray_temporaries(run_dir: Path) -> list[Path]:
    """Remove what killed writes left in ``run_dir`` (``.mlflow.db.tmp-*``, ``.ledger.parquet.tmp*``,
    ``.metrics.json.*.tmp`` ...). Call only while holding the run directory's lock. Returns them."""
    removed = []
    for pattern in _TEMPORARY_GLOBS:
        for p in run_dir.glob(pattern):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _check_same_pool(run_dir: Path, pool: list[Example], source: str, record: bool = True) -> None:
    """Refuse to resume on a pool whose examples changed since the run started (same recipe, other
    file contents): finished rounds name examples by id, and their selections came from the old pool."""
    digest = hashlib.sha1()
    for e in pool:
        digest.update(json.dumps([e.id, e.question, e.solution, e.answer]).encode())
    fp = digest.hexdigest()
    path = run_dir / STATE_DIR / "pool.sha1"
    if path.exists() or path.is_symlink():
        old = _read_state_text(path).strip()
        if old != fp:
            raise DataError(
                f"data.pool {source!r} changed since this run started (its examples differ from the "
                f"ones the finished rounds used); restore it, or set another output_dir"
            )
    elif record:  # a new run, or one made before pools were fingerprinted: check from now on
        atomic_write_text(path, fp + "\n")


# sections a resumed run may change: more rounds, other strategies (each strategy checks its
# own settings against its finished rounds), another tracking store
_RESUMABLE_CHANGES = {"loop.rounds", "strategies", "tracking", "output_dir", "name"}


def _check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume a run directory with settings that would change its finished rounds."""

    old_file = run_dir / RESOLVED_RECIPE
    started = (run_dir / "seed_ids.json").exists()
    if not old_file.exists():
        old_file = run_dir / LEGACY_RECIPE  # a run made before curator-run.yaml
        if not (old_file.exists() and started):
            if started:  # a run is here, but the record of its settings is gone: nothing to check against
                raise ConfigError(
                    f"{run_dir} holds a started run (seed_ids.json) but its {RESOLVED_RECIPE} is missing, "
                    "so changed settings cannot be told from the ones its finished rounds used; restore "
                    f"{RESOLVED_RECIPE}, or set output_dir to a new directory"
                )
            return  # no run here yet (a recipe.yaml alone is the user's, not a run's)
    raw = readback.read_recipe_mapping(old_file)
    try:  # through the dataclasses, so settings added since the run was made read as their defaults
        old = flatten(recipe_from_dict(raw).to_dict())
    except ConfigError:
        old = flatten(raw)
    new = flatten(recipe.to_dict())

    def kept(key: str) -> bool:
        return not any(key == c or key.startswith(c + ".") for c in _RESUMABLE_CHANGES)

    changed = sorted(k for k in set(old) | set(new) if kept(k) and old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in changed[:5])
        raise ConfigError(
            f"{run_dir} holds a run made with other settings ({shown}"
            f"{' ...' if len(changed) > 5 else ''}); resuming would mix them. "
            "Set output_dir to a new directory (--set output_dir=...), or delete the old one"
        )


def run_recipe(
    recipe: Recipe, progress: bool = True, echo=print, store_dir: str | os.PathLike | None = None
) -> RunSummary:
    """Run (or resume) every strategy of the recipe, then compare them (``store_dir``: see
    `prepare_workspace`)."""
    ws = prepare_workspace(recipe, progress=progress, store_dir=store_dir)
    try:
        return _run_loops(ws, recipe, echo)
    finally:
        ws.release()


def _run_loops(ws: Workspace, recipe: Recipe, echo) -> RunSummary:
    loop_cls = get_loop(recipe.loop.loop)
    loops = []
    for spec in recipe.strategies:
        lp = loop_cls(ws, spec)
        check_loop_instance(recipe.loop.loop, lp)
        lp.setup()
        loops.append(lp)
    distributed.barrier("setting up the strategies' runs")  # a rank that failed setup stops the others
    t0 = time.time()
    for r in range(recipe.loop.rounds):
        ws.cache.clear()
        for lp in loops:
            if not lp.done:
                lp.run_round(r)
                lp.save_state()
        if all(lp.done for lp in loops):
            break
    ws.cache.clear()
    ws.close()
    strategies = {lp.spec.run_name: lp.summary() for lp in loops}
    summary = RunSummary(
        run_dir=ws.run_dir, tracking_uri=ws.tracking_uri, experiment=recipe.experiment, strategies=strategies
    )
    if loops and distributed.is_main_process():
        result = compare_run_dir(ws.run_dir, baseline="iid", out_dir=ws.run_dir)
        summary.compare_table = result.table
        summary.curves_png = result.png
        for lp in loops:
            lp.log_final_artifacts(result)
    if distributed.is_main_process():
        echo(f"done in {time.time() - t0:.0f}s")
    return summary
