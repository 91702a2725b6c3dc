"""Recipes: YAML files validated into frozen dataclasses before anything heavy happens.

A recipe is made of the library's own settings dataclasses (`PromptFormat`, `TrainSettings`,
`LoraSettings`) plus the sections defined here. Loading checks every key and type and reports all
problems at once; `--set a.b=value` overrides are applied to the YAML before validation, so the
precedence is CLI > YAML > defaults.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from curator.config import describe, from_dict, to_dict
from curator.data.format import PromptFormat
from curator.data.grading import GraderProtocol, get_grader
from curator.data.loaders import is_synthetic_source, load_examples
from curator.dynamics.settings import DynamicsSettings, EvalSettings
from curator.errors import ConfigError, CuratorError, describe_exception, did_you_mean
from curator.loop import get_loop
from curator.models.loading import _DTYPE_ALIASES, DTYPES
from curator.models.lora import LoraSettings
from curator.strategy import build_strategy
from curator.tracking.mlflow_store import uri_problem
from curator.training.settings import TrainSettings

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class ModelSettings:
    name: str = _help(
        "hub id, local dir, .gguf file, 'smollm2-135m-instruct' or 'tiny-random'", default="smollm2-135m-instruct"
    )
    dtype: str = _help(
        "'auto' (bf16 where the GPU has it, else fp32), 'float32', 'bfloat16', 'float16'", default="auto"
    )
    device: str | None = _help("'cpu', 'cuda', 'cuda:1' ...; null picks the GPU when there is one", default=None)
    trust_remote_code: bool = _help("run model code from the hub repo; off unless you trust it", default=False)
    lora: LoraSettings | None = _help("LoRA adapter settings; null for full finetuning", default_factory=LoraSettings)

    def __post_init__(self):
        name = str(self.dtype).lower().removeprefix("torch.")
        if _DTYPE_ALIASES.get(name, name) not in DTYPES:
            raise ConfigError(f"model.dtype: {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class DataSettings:
    pool: str = _help(
        "candidate pool: a file, a hub id, or 'synthetic:<preset>?n=..&seed=..'", default="synthetic:easy?n=2000&seed=1"
    )
    pool_config: str | None = _help("hub dataset config (e.g. 'main' for openai/gsm8k)", default=None)
    pool_split: str = _help("split of the pool dataset", default="train")
    pool_size: int | None = _help("use only the first N pool examples", default=None)
    test: str | None = _help(
        "held-out test set (same forms as pool); null: no test accuracy", default="synthetic:easy?n=200&seed=2"
    )
    test_config: str | None = _help("hub dataset config of the test set", default=None)
    test_split: str = _help("split of the test dataset", default="test")
    test_size: int | None = _help("use only the first N test examples", default=None)
    fields: dict[str, str] = _help(
        "column names for question/solution/answer when not GSM8K/MATH layout", default_factory=dict
    )
    grader: str = _help("answer grader: auto, gsm8k, math, numeric, or module:Class", default="auto")
    seed_size: int = _help("size of the i.i.d. seed set S0 (identical across strategies)", default=32)
    source: Literal["pool", "generator"] = _help(
        "'pool': select from the fixed pool; 'generator': synthesize candidates each round (synthetic pools only)",
        default="pool",
    )
    generator_pool_size: int = _help("candidates synthesized per round when source=generator", default=1000)

    def __post_init__(self):
        problems = []
        if self.seed_size < 1:
            problems.append(f"data.seed_size must be >= 1, got {self.seed_size}")
        for key in ("pool_size", "test_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                problems.append(f"data.{key} must be >= 1 (or null for all), got {getattr(self, key)}")
        if self.generator_pool_size < 1:
            problems.append(f"data.generator_pool_size must be >= 1, got {self.generator_pool_size}")
        if self.source == "generator" and not self.pool.startswith("synthetic"):
            problems.append(
                "data.source=generator needs a synthetic pool ('synthetic:<preset>'); "
                "use data.source=pool for files and hub datasets"
            )
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class LoopSettings:
    rounds: int = _help("training rounds; selections happen between them (rounds - 1 times)", default=3)
    budget: int | str | list[int | str] = _help(
        "examples added per selection: a number, or a multiple of the seed set's size ('2x': twice "
        "data.seed_size, as Kang et al.'s budgets of 0.5-10x the training set); one value or one "
        "per selection",
        default=32,
    )
    continue_training: bool = _help(
        "keep training the last round's model instead of restarting from the base model each round", default=False
    )
    loop: str = _help("loop implementation: 'active' or a module:Class path", default="active")

    def __post_init__(self):
        problems = []
        if self.rounds < 1:
            problems.append(f"loop.rounds must be >= 1, got {self.rounds}")
        budgets = self.budget if isinstance(self.budget, list) else [self.budget]
        for b in budgets:
            problem = _budget_problem(b)
            if problem:
                problems.append(f"loop.budget: {problem}")
        if isinstance(self.budget, list) and len(self.budget) < self.rounds - 1:
            problems.append(
                f"loop.budget lists {len(self.budget)} budget(s) but {self.rounds} rounds need "
                f"{self.rounds - 1}; give one number or one per selection"
            )
        if problems:
            raise ConfigError(problems)

    def budget_for(self, selection_index: int, seed_size: int | None = None) -> int:
        """Examples to add at selection ``selection_index``; ``seed_size`` resolves an 'Nx' budget."""
        b = self.budget[selection_index] if isinstance(self.budget, list) else self.budget
        if isinstance(b, int):
            return b
        if seed_size is None:
            raise ConfigError(f"loop.budget {b!r} is a multiple of the seed set's size; pass seed_size")
        # rounded down as Kang et al.'s int(n * copies) (the epsilon absorbs 0.29 * 100 = 28.99..),
        # and at least one example: 0.5x of a seed set of 1 still grows the set
        return max(1, math.floor(_budget_multiple(b) * seed_size + 1e-9))


def _budget_multiple(b: str) -> float:
    return float(b.strip().lower().removesuffix("x"))


def _budget_problem(b: int | str) -> str | None:
    """Why one budget entry is not usable, or None."""
    if isinstance(b, int):
        return None if b >= 1 else f"must be >= 1 per round, got {b}"
    text = b.strip().lower()
    try:
        ok = text.endswith("x") and 0 < _budget_multiple(text) < math.inf
    except ValueError:
        ok = False
    return None if ok else f"{b!r} is neither a number nor a multiple of the seed set's size like '2x' or '0.5x'"


@dataclass(frozen=True)
class StrategySpec:
    name: str = _help("registered strategy name or module:Class path")
    params: dict[str, Any] = _help("strategy parameters", default_factory=dict)
    label: str | None = _help("run name in MLflow and the run dir; defaults to the name", default=None)

    def __post_init__(self):
        if self.label is not None:
            problem = path_component_problem(self.label)
            if problem:
                raise ConfigError(f"label {self.label!r} {problem}; it names a folder in the run directory")
        problem = path_component_problem(self.run_name)
        if problem:
            raise ConfigError(
                f"name {self.name!r} gives the run folder {self.run_name!r}, which {problem}; "
                "give the strategy a 'label'"
            )

    @property
    def run_name(self) -> str:
        return self.label or self.name.replace(":", "_").replace("/", "_").replace("\\", "_")


@dataclass(frozen=True)
class TrackingSettings:
    uri: str | None = _help("MLflow tracking URI; null: sqlite in the run directory", default=None)
    experiment: str | None = _help("MLflow experiment name; null: the recipe name", default=None)


@dataclass(frozen=True)
class SweepSettings:
    learning_rates: list[float] = _help("learning rates of the sweep grid", default_factory=list)
    epochs: list[int] = _help("epoch counts of the sweep grid", default_factory=list)


@dataclass(frozen=True)
class Recipe:
    name: str = _help("recipe name: MLflow experiment and run directory name", default="curator")
    seed: int = _help("seeds the seed set, training, sampling and selection", default=0)
    seeds: list[int] | None = _help(
        "run the recipe once per seed, each in <output_dir>/seed-<n>/ "
        "(resumable per seed), and compare with intervals over seeds; "
        "null: one run with `seed`",
        default=None,
    )
    output_dir: str | None = _help("run directory; null: runs/<name>", default=None)
    model: ModelSettings = _help("base model", default_factory=ModelSettings)
    format: PromptFormat = _help("prompt/target templates", default_factory=PromptFormat)
    data: DataSettings = _help("pool, test set, seed set", default_factory=DataSettings)
    training: TrainSettings = _help("finetuning each round", default_factory=TrainSettings)
    dynamics: DynamicsSettings = _help("learning-dynamics measurement", default_factory=DynamicsSettings)
    evaluation: EvalSettings = _help("test accuracy", default_factory=EvalSettings)
    loop: LoopSettings = _help("rounds and budgets", default_factory=LoopSettings)
    strategies: list[StrategySpec] = _help(
        "strategies to compare (one MLflow run each)", default_factory=lambda: [StrategySpec(name="iid")]
    )
    tracking: TrackingSettings = _help("MLflow", default_factory=TrackingSettings)
    sweep: SweepSettings | None = _help("learning-rate x epochs grid for `curate predict` sweeps", default=None)

    def __post_init__(self):
        labels = [s.run_name for s in self.strategies]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        problems = []
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed must be in [0, 2**32), got {self.seed}")
        if self.output_dir is None and path_component_problem(self.name):
            problems.append(
                f"name {self.name!r} {path_component_problem(self.name)}; with output_dir null "
                "the run directory is runs/<name>: give a plain name or set output_dir"
            )
        if not self.strategies:
            problems.append("strategies: list at least one strategy")
        if dupes:
            problems.append(f"strategies: run names {dupes} appear twice; give each a distinct 'label'")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            problems.append(f"seeds: give distinct seeds (or null for one run), got {self.seeds}")
        if problems:
            raise ConfigError(problems)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or os.path.join("runs", self.name))

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def path_component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder name inside the run directory, or None if it can."""
    if not name or not name.strip():
        return "is empty"
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        return "must be a plain folder name (no '/', '\\', '.' or '..')"
    if name.startswith("."):
        return "must not start with '.' (hidden folders are curator's own)"
    return None


def resolve_recipe_path(path: str | os.PathLike) -> Path:
    """A path, or the name of a shipped recipe ('demo' -> recipes/demo.yaml)."""
    p = Path(path)
    if p.exists():
        return p
    for cand in (RECIPES_DIR / f"{path}.yaml", RECIPES_DIR / str(path)):
        if cand.exists():
            return cand
    shipped = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.exists() else []
    hint = did_you_mean(str(path), shipped)
    raise CuratorError(f"recipe {str(path)!r} not found.{hint} Shipped recipes: {', '.join(shipped)}")


def _set_path(data: dict, dotted: str, value: Any, problems: list[str]) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                problems.append(f"--set {dotted}: {'.'.join(keys[:i])} has no item {k}")
                return
            node = node[int(k)]
        else:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
        if not isinstance(node, (dict, list)):
            problems.append(
                f"--set {dotted}: {'.'.join(keys[: i + 1])} is a value ({node!r}), not a section "
                f"or list; set {'.'.join(keys[: i + 1])}=... instead"
            )
            return
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            problems.append(f"--set {dotted}: no list item {last}")
            return
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw recipe dict."""
    data = copy.deepcopy(data)
    problems: list[str] = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value, problems)
    if problems:
        raise ConfigError(problems)
    return data


def recipe_from_dict(data: dict, source: str | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe must be a YAML mapping of sections, got {type(data).__name__}", source=source)
    return from_dict(Recipe, data, source=source)


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. ``path=None`` loads the embedded demo."""
    p = resolve_recipe_path(path if path is not None else "demo")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset {e.start}); save the recipe as UTF-8",
            source=str(p),
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"malformed YAML{where}: {getattr(e, 'problem', e)}", source=str(p)) from None
    if not isinstance(data, dict):  # refused before --set, which would index into a scalar
        return recipe_from_dict(data, source=str(p))
    return recipe_from_dict(apply_overrides(data, overrides), source=str(p))


def validate_recipe(recipe: Recipe) -> list[str]:
    """Checks that need the registries (strategies, graders, loops) but no model. Returns notes."""

    problems: list[str] = []
    for i, spec in enumerate(recipe.strategies):
        try:
            build_strategy(spec.name, spec.params)
        except CuratorError as e:
            problems.append(f"strategies[{i}] ({spec.name}): {e}")
    try:
        grader = get_grader(recipe.data.grader)
        if not isinstance(grader, GraderProtocol):
            problems.append(
                f"data.grader: {recipe.data.grader!r} gives a {type(grader).__name__}, which is not a "
                "grader (it needs name, extract(completion) and is_correct(completion, answer))"
            )
    except CuratorError as e:
        problems.append(f"data.grader: {e}")
    except Exception as e:  # a grader plugin whose constructor fails
        problems.append(f"data.grader: {recipe.data.grader!r} could not be built ({describe_exception(e)})")
    problems += _data_source_problems(recipe)
    problems += _model_and_naming_problems(recipe)
    if recipe.tracking.uri is not None:
        problem = uri_problem(recipe.tracking.uri)
        if problem:
            problems.append(f"tracking.uri: {problem}")
    try:
        get_loop(recipe.loop.loop)
    except CuratorError as e:
        problems.append(f"loop.loop: {e}")
    if problems:
        raise ConfigError(problems)
    notes = []
    if recipe.model.trust_remote_code:
        notes.append(
            f"model.trust_remote_code is true: loading {recipe.model.name!r} runs Python code from its "
            "repository on this machine; keep it only for a model repository you trust"
        )
    if recipe.dynamics.backend == "vllm":
        notes.append("dynamics.backend=vllm: needs the 'vllm' extra and a GPU at run time")
    notes += _organism_notes(recipe.model.name)
    notes += _generator_pool_notes(recipe)
    return notes


def _generator_pool_notes(recipe: Recipe) -> list[str]:
    """A note when generator mode's pool of fresh i.i.d. draws is smaller than what the rounds add:
    `iid` takes its draws without replacement, so it would train on fewer examples than the other
    strategies at the last rounds (not refused: the run works, its curves are just not comparable)."""
    d = recipe.data
    if d.source != "generator" or not any(s.name == "iid" for s in recipe.strategies):
        return []
    added = sum(recipe.loop.budget_for(i, d.seed_size) for i in range(recipe.loop.rounds - 1))
    if added <= d.generator_pool_size:
        return []
    return [
        f"data.generator_pool_size: {d.generator_pool_size} fresh draws, but the rounds add {added} "
        f"examples: `iid` runs out and trains on fewer than the other strategies; set it to >= {added}"
    ]


def _organism_notes(name: str) -> list[str]:
    """A note when the recipe's organism is not the benchmarked default (not refused: other regimes
    are allowed, but the regime map of docs/ORGANISM.md was measured on the default only)."""
    if not name.startswith(("organism?", "organism:")):
        return []
    from dataclasses import asdict

    from curator.organism.build import OrganismConfig, parse_spec  # the organism's settings have one parser

    default, cfg = asdict(OrganismConfig()), asdict(parse_spec(name))
    changed = [f"{k}={cfg[k]}" for k in sorted(cfg) if cfg[k] != default[k]]
    if not changed:
        return []
    return [
        f"model.name: this organism ({', '.join(changed)}) is not the benchmarked default; whether "
        "finetuning helps and training sets get memorized was measured on the default only "
        "(docs/ORGANISM.md, regime map)"
    ]


# torch.device's device types (checked by form here: validate imports no torch); ":N" picks one
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|xla|hpu|npu|mtia|meta)(:\d+)?")


def _model_and_naming_problems(recipe: Recipe) -> list[str]:
    """What `run` refuses about the model, the test set and the MLflow names, found without a model."""
    problems = []
    m = recipe.model
    if m.device is not None and not _DEVICE.fullmatch(str(m.device)):
        problems.append(f"model.device: {m.device!r} is not a device; use 'cpu', 'cuda', 'cuda:N', 'mps' or null")
    if m.name == "organism" or m.name.startswith(("organism?", "organism:")):
        from curator.organism.build import parse_spec  # the organism's settings have one parser

        try:
            parse_spec(m.name)
        except CuratorError as e:
            problems.append(f"model.name: {e}")
    d = recipe.data
    # a hub dataset's split and config pick different data; a synthetic spec or a file has none
    from curator.data.loaders import is_synthetic_source

    local = d.pool is not None and (is_synthetic_source(d.pool) or Path(d.pool).exists())
    same = d.test == d.pool and (local or (d.test_config, d.test_split) == (d.pool_config, d.pool_split))
    if (
        d.test is not None
        and same
        and (d.test_size is None or (d.pool_size is not None and d.test_size >= d.pool_size))
    ):
        problems.append(
            f"data.test is the same data as data.pool ({d.pool!r}): every pool example is also in data.test, "
            "so no seed set can be drawn; use a held-out test set (another split, file or seed)"
        )
    if not recipe.experiment.strip():
        key = "tracking.experiment" if recipe.tracking.experiment is not None else "name"
        problems.append(f"{key} is empty; it names the MLflow experiment: give a name")
    return problems


def _data_source_problems(recipe: Recipe) -> list[str]:
    """What `run` would find wrong with the data sources before loading any model: synthetic specs
    are parsed and one example generated; local files must exist. Hub ids are checked at run time."""

    problems = []
    for key in ("pool", "test"):
        src = getattr(recipe.data, key)
        if src is None:
            continue
        if is_synthetic_source(src):
            try:
                load_examples(src, limit=1)
            except CuratorError as e:
                problems.append(f"data.{key}: {e}")
            except Exception as e:  # a spec the generator cannot honour (e.g. a step count of 0)
                problems.append(f"data.{key}: {src!r} cannot generate examples ({describe_exception(e)})")
        elif Path(src).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv") and not Path(src).is_file():
            problems.append(f"data.{key}: file {src!r} does not exist")
    return problems


def reference_markdown() -> str:
    """The recipe key reference (docs/RECIPES.md is generated from this; a test keeps them in sync)."""
    import dataclasses
    import typing

    out = [
        "# Recipe reference",
        "",
        "Generated from the settings dataclasses by `python -m curator.recipes > docs/RECIPES.md`.",
        "Every key is optional; the defaults are shown. Override any key on the command line with",
        "`--set section.key=value` (values are parsed as YAML). `strategies` is a list of",
        "`{name, params, label}`; see `curate strategies` for each strategy's parameters.",
        "",
    ]

    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    def yaml_value(v):
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()

    hints = typing.get_type_hints(Recipe)
    top = []
    sections: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(Recipe):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        cls = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if cls is None or f.name == "strategies":
            top.append(f)
        else:
            sections.append((f.name, cls, f.metadata.get("help", "")))
    out += ["## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, typ, default, help_ in describe(Recipe):
        if name in {f.name for f in top}:
            out.append(f"| `{name}` | {cell(typ)} | `{cell(yaml_value(default))}` | {cell(help_)} |")
    for name, cls, help_ in sections:
        out += ["", f"## `{name}` — {help_}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, typ, default, h in describe(cls):
            out.append(f"| `{key}` | {cell(typ)} | `{cell(yaml_value(default))}` | {cell(h)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
