"""The selection-strategy contract: what a strategy sees, what it returns, and how it is found.

A strategy is small (modAL style): most implement ``score(ctx)`` — one float per pool candidate,
**higher = take first** — and inherit ``select``, which hands the scores to the one shared
``top_k`` helper. Set-level strategies (k-center, round-robin over targets) override ``select``.
Either way a strategy records a score for every candidate in ``ctx.scores`` so the loop can store
selected and non-selected scores alike.

Strategies are found through the ``strategies`` registry: built-ins by lazy ``"strategies.x:Cls"``
targets (curator never imports ``strategies/`` directly), third parties through the entry-point
group ``curator.strategies``, or a ``"package.module:Class"`` path written in a recipe.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from curator.config import check_value
from curator.data.example import Example
from curator.errors import CuratorError, StrategyError, describe_exception, did_you_mean
from curator.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from curator.dynamics.ledger import Ledger
    from curator.signals import RestrictedSignals, Signals

SIGNALS = frozenset({"embeddings", "losses", "answers", "ledger"})

strategies: Registry = Registry("strategy", entry_point_group="curator.strategies")
BUILTINS = {
    "iid": "strategies.iid:IID",
    "loss": "strategies.loss:HighestLoss",
    "embedding-diversity": "strategies.diversity:KCenterDiversity",
    "premem-threshold": "strategies.premem:PreMemThreshold",
    "uncertainty": "strategies.uncertainty:AnswerEntropy",
    "premem-diverse": "strategies.composite:PreMemDiverse",
    "learnability": "strategies.learnability:Learnability",
    "s2l": "strategies.s2l:SmallToLarge",
    "routing-outliers": "strategies.routing:RoutingOutliers",
    "ifd": "strategies.ifd:InstructionFollowingDifficulty",
    "long-solution": "strategies.long_solution:LongestSolution",
    "random-variants": "strategies.random_variants:RandomVariants",
    "pass-rate-band": "strategies.passrate:PassRateBand",
    "drop-solved-failed": "strategies.passrate:DropSolvedFailed",
}
for _name, _target in BUILTINS.items():
    strategies.register(_name, _target)


@dataclass
class SelectionContext:
    """Everything a strategy may look at when choosing from the pool.

    Attributes:
        pool: candidates still available (selection returns their ids, never positions).
        train: the current training set S_r.
        ledger: the last round's learning-dynamics ledger over ``train`` (None before any).
        signals: embeddings / losses / sampled answers, computed on demand and cached.
        rng: the round's seeded generator — the only source of randomness a strategy may use.
        round: round index r.
        p: the memorization threshold (perplexity) for PreMemAcc.
        source: where candidates come from; a generative one can make examples similar to given
            ones (``generate_similar``).
        scores: filled by the strategy — id -> score for every candidate it scored.
        notes: filled by the strategy — things the user should know (fallbacks taken ...).
    """

    pool: list[Example]
    train: list[Example] = field(default_factory=list)
    ledger: Ledger | None = None
    signals: Signals | RestrictedSignals | None = None  # restricted to its needs during select
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    round: int = 0
    p: float = 1.105
    source: Any = None
    scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.pool]

    @property
    def generative(self) -> bool:
        return bool(getattr(self.source, "generative", False))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def record_scores(self, ids: Sequence[str], scores: Any) -> None:
        """Store one score per id (the loop logs selected and non-selected scores)."""
        self.scores.update(zip(ids, np.asarray(scores, dtype=float).tolist()))

    def generate_similar(self, examples: Sequence[Example], n_per: int) -> list[Example]:
        """Ask a generative source for ``n_per`` new examples similar to each of ``examples``.

        The new examples are appended to ``pool`` (so their ids may be selected) and returned, in
        the order the source made them. Ids already in the pool or training set are dropped.
        """
        if not self.generative:
            raise StrategyError(
                "this source cannot generate new examples (it is a fixed pool); "
                "use a pool-based strategy or a generator source"
            )
        seed = int(self.rng.integers(2**31 - 1))
        made = list(self.source.similar(list(examples), int(n_per), seed=seed))
        seen = {e.id for e in self.pool} | {e.id for e in self.train}
        new = []
        for e in made:
            if e.id not in seen:
                seen.add(e.id)
                new.append(e)
        self.pool.extend(new)
        return new


class Strategy:
    """Base class for selection strategies.

    Subclasses set ``name``, ``needs`` (a subset of ``SIGNALS``) and ``description``, take their
    parameters as keyword arguments of ``__init__`` (with defaults, so ``curate strategies`` can list
    them), and implement ``score`` (higher = take first) or, for set-level choices, ``select``.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""

    def score(self, ctx: SelectionContext) -> np.ndarray:
        """One score per ``ctx.pool`` candidate; higher = take first."""
        raise NotImplementedError(f"strategy {self.name!r} implements neither score() nor select()")

    def select(self, ctx: SelectionContext, k: int) -> list[str]:
        """Ids of up to ``k`` pool candidates, best first (score then shared top-k)."""
        ids = ctx.ids
        scores = np.asarray(self.score(ctx), dtype=np.float64)
        if scores.shape != (len(ids),):
            raise StrategyError(
                f"strategy {self.name!r}: score() returned shape {scores.shape}, "
                f"expected one score per pool candidate ({len(ids)},)"
            )
        ctx.record_scores(ids, scores)
        return top_k(scores, k, ids, ctx.rng)

    def ranks_by_score(self) -> bool:
        """Whether this strategy's choice from a fixed pool is ``score()`` then the shared
        `top_k` (so a caller may take that choice without building the per-candidate score dict,
        as the RL seam does for a 100k-prompt pool every step)."""
        return type(self).select is Strategy.select

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter name -> default (``inspect.Parameter.empty`` when required)."""
        return {n: p.default for n, p in _init_params(cls).items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n, '?')!r}" for n in self.parameters())
        return f"{type(self).__name__}({args})"


def _init_params(cls: type[Any]) -> dict[str, inspect.Parameter]:
    if cls.__init__ is object.__init__:
        return {}
    sig = inspect.signature(cls.__init__)
    return {n: p for n, p in list(sig.parameters.items())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def top_k(scores: Any, k: int, ids: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The ``k`` ids with the highest scores, best first.

    Ties are broken by a random permutation drawn from ``rng`` (so equal scores never favour pool
    order, and the same seed gives the same choice). NaN scores are refused: a strategy that cannot
    score a candidate should say so with -inf.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    if len(ids) != n:
        raise StrategyError(f"top_k: {n} scores for {len(ids)} ids")
    if np.isnan(s).any():
        raise StrategyError(f"top_k: {int(np.isnan(s).sum())} NaN scores; score unknown candidates -inf")
    k = max(0, min(int(k), n))
    tiebreak = rng.permutation(n)  # always drawn, so rng state after top_k does not depend on k
    if k == 0:
        return []
    if k < n:
        # only the candidates above the k-th best score, and the ties at it with the smallest
        # tie-breaks, can be chosen; sort just those (a large pool of equal scores stays cheap)
        neg = -s
        kth = np.partition(neg, k - 1)[k - 1]
        better, tied = np.flatnonzero(neg < kth), np.flatnonzero(neg == kth)
        need = k - better.size
        if tied.size > need:
            tied = tied[np.argpartition(tiebreak[tied], need - 1)[:need]]
        cand = np.concatenate([better, tied])
    else:
        cand = np.arange(n)
    order = cand[np.lexsort((tiebreak[cand], -s[cand]))][:k]
    return [ids[i] for i in order]


@dataclass(frozen=True)
class Selection:
    """What ``run_selection`` hands back to the loop.

    Attributes:
        ids: chosen pool ids, best first.
        examples: the chosen Examples (some may be newly generated), in the same order.
        scores: id -> score for every candidate the strategy scored (selected or not).
        note: what the user should know (fewer than k taken, fallbacks ...); "" when nothing.
        strategy: the strategy's name.
    """

    ids: list[str]
    examples: list[Example]
    scores: dict[str, float]
    note: str = ""
    strategy: str = ""


def run_selection(strategy: Strategy, ctx: SelectionContext, k: int) -> Selection:
    """Call ``strategy.select`` and check that it kept the contract.

    k larger than a fixed pool takes what is left and says so in ``note``. Duplicates, ids that are
    not in the pool, or more than k ids raise StrategyError naming the strategy.
    """
    name = strategy_name(strategy)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise StrategyError(f"strategy {name!r}: k must be a non-negative integer, got {k!r}")
    k = int(k)
    notes: list[str] = []
    if k > len(ctx.pool) and not ctx.generative:
        notes.append(f"asked for {k} examples but only {len(ctx.pool)} candidates are left; taking all {len(ctx.pool)}")
        k = len(ctx.pool)
    ctx.scores = {}
    ctx.notes = []
    signals = ctx.signals
    if signals is not None and hasattr(signals, "restricted"):
        # a strategy sees only the signals it declares, so `needs` cannot silently lie
        ctx.signals = signals.restricted(strategy.needs, name)
    try:
        chosen = strategy.select(ctx, k) if k > 0 else []
    finally:
        ctx.signals = signals
    if chosen is None or isinstance(chosen, (str, bytes)) or not hasattr(chosen, "__iter__"):
        raise StrategyError(
            f"strategy {name!r}: select() must return a list of example ids, got {type(chosen).__name__}"
        )
    chosen = list(chosen)
    bad_type = [c for c in chosen if not isinstance(c, str)]
    if bad_type:
        raise StrategyError(
            f"strategy {name!r}: select() must return example ids (str), got "
            f"{bad_type[:3]!r} — return pool ids, never positions"
        )
    by_id = {e.id: e for e in ctx.pool}
    dup: list[str] = []
    if len(set(chosen)) != len(chosen):
        from collections import Counter

        dup = sorted(c for c, n in Counter(chosen).items() if n > 1)
    if dup:
        raise StrategyError(
            f"strategy {name!r} returned duplicate ids: {', '.join(dup[:5])}"
            + (f" (+{len(dup) - 5} more)" if len(dup) > 5 else "")
        )
    outside = [c for c in chosen if c not in by_id]
    if outside:
        raise StrategyError(
            f"strategy {name!r} returned {len(outside)} ids that are not in the pool: {', '.join(outside[:5])}"
        )
    if len(chosen) > k:
        raise StrategyError(f"strategy {name!r} returned {len(chosen)} ids but only k={k} were asked for")
    if len(chosen) < min(k, len(ctx.pool)):
        # stopping the loop here would blame the pool ("ran out") for the strategy's shortfall
        raise StrategyError(
            f"strategy {name!r} returned {len(chosen)} ids for k={k} while {len(ctx.pool)} "
            "candidates remain; select() must return k ids whenever the pool has them"
        )
    if len(chosen) < k:
        notes.append(f"strategy {name!r} returned {len(chosen)} of the {k} asked for")
    notes.extend(ctx.notes)
    return Selection(
        ids=chosen, examples=[by_id[c] for c in chosen], scores=dict(ctx.scores), note="; ".join(notes), strategy=name
    )


def strategy_name(strategy: Any) -> str:
    return getattr(strategy, "name", "") or type(strategy).__name__


def resolve_strategy_class(name_or_path: str) -> type[Any]:
    """The strategy class for a registered name or a ``module:Class`` path, contract-checked."""
    try:
        cls = strategies.get(name_or_path)
    except StrategyError:
        raise
    except CuratorError as e:
        raise StrategyError(str(e)) from e
    check_strategy_class(cls, name_or_path)
    return cls


def check_strategy_class(cls: Any, where: str) -> None:
    """Raise StrategyError unless ``cls`` satisfies the strategy contract."""
    if not inspect.isclass(cls):
        raise StrategyError(
            f"strategy {where!r} resolves to {cls!r}, which is not a class; point it at a Strategy subclass"
        )
    if not callable(getattr(cls, "select", None)):
        raise StrategyError(
            f"strategy {where!r} ({cls.__qualname__}) has no select(ctx, k) method; "
            "subclass curator.strategy.Strategy and implement score() or select()"
        )
    if issubclass(cls, Strategy) and cls.score is Strategy.score and cls.select is Strategy.select:
        raise StrategyError(f"strategy {where!r} ({cls.__qualname__}) implements neither score(ctx) nor select(ctx, k)")
    needs = getattr(cls, "needs", None)
    if not isinstance(needs, (set, frozenset)) or not needs <= SIGNALS:
        raise StrategyError(
            f"strategy {where!r} ({cls.__qualname__}): needs must be a frozenset "
            f"drawn from {sorted(SIGNALS)}, got {needs!r}"
        )


def build_strategy(name_or_path: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Instantiate a strategy by registered name or ``module:Class`` path, validating params.

    Raises:
        StrategyError: unknown name (with the closest match and the list), a path that does not
            import or a class that breaks the contract, or parameters it does not take.
    """
    cls = resolve_strategy_class(name_or_path)
    params = dict(params or {})
    label = getattr(cls, "name", "") or name_or_path
    accepted = _init_params(cls)
    takes_any = cls.__init__ is not object.__init__ and any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
    )
    listing = ", ".join(f"{n}={_fmt_default(p.default)}" for n, p in accepted.items()) or "(none)"
    unknown = [n for n in params if n not in accepted]
    if unknown and not takes_any:
        hints = [f"{n!r}{did_you_mean(n, accepted, parens=True)}" for n in unknown]
        raise StrategyError(f"strategy {label!r} has no parameter {', '.join(hints)}. Its parameters: {listing}")
    missing = [n for n, p in accepted.items() if p.default is p.empty and n not in params]
    if missing:
        raise StrategyError(f"strategy {label!r} needs parameter(s) {', '.join(missing)}. Its parameters: {listing}")
    # parameters are checked against the class's annotations the way recipe fields are, so a
    # wrong-typed value ('cover_train: "no"') is an error, not a truthy string
    try:
        annotations = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations in a plugin: leave its parameters unchecked
        annotations = {}
    problems = []
    for n in params:
        if n in annotations:
            params[n], bad = check_value(params[n], annotations[n], n)
            problems += bad
    if problems:
        raise StrategyError(f"strategy {label!r}: {'; '.join(problems)}. Its parameters: {listing}")
    try:
        obj = cls(**params)
    except CuratorError:
        raise
    except Exception as e:  # a wrong-typed parameter or a plugin's own bug: name the strategy either way
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no parameters"
        raise StrategyError(
            f"strategy {label!r} could not be built with {shown} ({describe_exception(e)}). Its parameters: {listing}"
        ) from e
    if not getattr(obj, "name", ""):
        try:
            obj.name = name_or_path
        except AttributeError:
            pass
    return obj


def _fmt_default(v: Any) -> str:
    if v is inspect.Parameter.empty:
        return "<required>"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def describe_strategies() -> list[dict[str, Any]]:
    """One row per available strategy: name, description, needs, parameters (or the load error)."""
    rows = []
    for name in strategies.names():
        try:
            cls = resolve_strategy_class(name)
        except StrategyError as e:
            rows.append({"name": name, "description": f"(cannot load: {e})", "needs": [], "parameters": {}})
            continue
        doc = (cls.description or (inspect.getdoc(cls) or "").split("\n")[0]).strip()
        rows.append(
            {
                "name": name,
                "description": doc,
                "needs": sorted(cls.needs),
                "parameters": {n: _fmt_default(p.default) for n, p in _init_params(cls).items()},
            }
        )
    return rows


def check_param(strategy: str, name: str, value: Any, ok: bool, requirement: str) -> None:
    """Raise StrategyError naming the strategy and parameter unless ``ok``."""
    if not ok:
        raise StrategyError(f"strategy {strategy!r}: parameter {name}={value!r} is invalid; it must be {requirement}")
