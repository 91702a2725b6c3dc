"""Lint, format and type checks on curator/ (configured in pyproject.toml, baseline included).

They run with the tests so that the README's one test command is also CI's lint and type check.
To fix a failure: `ruff check --fix curator`, `ruff format FILE`, or the type error mypy names.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args",
    [
        ("ruff", "check", "curator", "strategies", "loops"),
        ("ruff", "format", "--check", "curator", "strategies", "loops"),
    ],
    ids=["ruff-lint", "ruff-format"],
)
def test_ruff(args):
    res = _run(*args)
    assert res.returncode == 0, f"`{' '.join(args)}` failed:\n{res.stdout}{res.stderr}"


def test_mypy():
    res = _run("mypy")  # files and settings from [tool.mypy] in pyproject.toml
    assert res.returncode == 0, f"`mypy` failed:\n{res.stdout}{res.stderr}"
    assert "Success: no issues found" in res.stdout


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.endswith("&& pytest") and f"```bash\n{ci}\n```" in readme


# ---------------------------------------------------------------------------------------- layering
# The layer table is docs/ARCHITECTURE.md's "Layers" table (one place: the doc is the data). Every
# import between project modules is read with `ast`, function-local ones included: a local import
# hides a cycle from the interpreter, not from the design.

PACKAGES = ("curator", "strategies", "loops")
LIBRARY = "curator"  # never imports the plugin packages (it finds them through the registry)
PLUGINS = ("strategies", "loops")


def _project_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the project's packages under ``root``."""
    files = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


class _Import:
    """One import of a project module: who imports what, where, and whether inside a function."""

    def __init__(self, source: str, target: str, path: Path, node: ast.stmt, local: bool):
        self.source, self.target, self.path, self.node, self.local = source, target, path, node, local

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.node.lineno}"


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> list[str]:
    """Project modules one statement imports (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            parts = module.split(".")
            parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found: list[str] = []
    for name in names:
        while name and name not in modules:  # a name inside a module, or a third-party import
            name = name.rpartition(".")[0]
        if name and name != module and name not in found:
            found.append(name)
    return found


def _imports(files: dict[str, Path]) -> list[_Import]:
    modules, out = set(files), []
    for module, path in files.items():

        def visit(node: ast.AST, local: bool, module: str = module, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, path.name == "__init__.py", modules):
                        out.append(_Import(module, target, path, child, local))
                visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return out


def _cycles(modules: set[str], imports: list[_Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    succ: dict[str, list[str]] = {m: [] for m in modules}
    for imp in imports:
        succ[imp.source].append(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def enter(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)

    for root in sorted(modules):
        if root in index:
            continue
        enter(root)
        work = [(root, iter(succ[root]))]
        while work:
            v, successors = work[-1]
            w = next(successors, None)
            if w is None:  # v is finished: fold its low-link into its parent, pop its component
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while not comp or comp[-1] != v:
                        comp.append(stack.pop())
                        on_stack.discard(comp[-1])
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif w not in index:
                enter(w)
                work.append((w, iter(succ[w])))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return found


def _shortest_cycle(start: str, edges: list[_Import]) -> list[_Import]:
    """The imports of a shortest path from ``start`` back to itself (breadth first)."""
    came: dict[str, _Import] = {}
    frontier, seen = [start], {start}
    while frontier:
        nxt = []
        for v in frontier:
            for e in (e for e in edges if e.source == v):
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if e.target not in seen:
                    seen.add(e.target)
                    came[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    return []


def _layer_table(doc: str) -> list[tuple[str, int, list[str]]]:
    """(layer, rank, module patterns) rows of the doc's ``## Layers`` table."""
    assert "\n## Layers\n" in doc, "docs/ARCHITECTURE.md has no '## Layers' section"
    section = doc.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].isdigit():
            # a pattern is a backticked dotted name; backticked prose in the cell is not one
            patterns = [p for p in re.findall(r"`([^`]+)`", cells[2]) if re.fullmatch(r"[\w.]+(\.\*)?", p)]
            rows.append((cells[0], int(cells[1]), patterns))
    assert rows, "docs/ARCHITECTURE.md's Layers table has no `| layer | rank | modules |` rows"
    return rows


def _layer_of(module: str, table: list[tuple[str, int, list[str]]]) -> tuple[str, int] | None:
    """The row of the most specific pattern that matches (``curator.analysis.sweep`` over ``.*``)."""
    best: tuple[int, str, int] | None = None
    for layer, rank, patterns in table:
        for pattern in patterns:
            name = pattern.removesuffix(".*")
            if module == name or (pattern.endswith(".*") and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), layer, rank)
    return None if best is None else (best[1], best[2])


def _comment_lines(path: Path) -> tuple[set[int], set[int]]:
    """(lines holding a comment, lines holding only a comment)."""
    anywhere, alone = set(), set()
    with path.open(encoding="utf-8") as f:
        for tok in tokenize.generate_tokens(f.readline):
            if tok.type == tokenize.COMMENT:
                anywhere.add(tok.start[0])
                if not tok.line[: tok.start[1]].strip():
                    alone.add(tok.start[0])
    return anywhere, alone


def _layering_problems(root: Path, doc: str) -> dict[str, list[str]]:
    """Every break of the layering rules under ``root``, as one line each naming file:line."""
    files = _project_files(root)
    imports = _imports(files)
    table = _layer_table(doc)
    problems: dict[str, list[str]] = {"unplaced": [], "cycles": [], "upward": [], "local": []}
    layer = {m: _layer_of(m, table) for m in files}
    problems["unplaced"] = [
        f"{files[m].relative_to(root)}: {m} is in no row of the Layers table" for m in files if layer[m] is None
    ]
    for comp in _cycles(set(files), imports):
        inside = [i for i in imports if i.source in comp and i.target in comp]
        path = " -> ".join(f"{i.source} ({i.where(root)})" for i in _shortest_cycle(comp[0], inside)) + f" -> {comp[0]}"
        edges = [f"{i.where(root)} {i.source} -> {i.target}" for i in inside]
        problems["cycles"].append(
            f"cycle of {len(comp)} ({', '.join(comp)}); shortest through {comp[0]}: {path}; its imports:\n      "
            + "\n      ".join(edges)
        )
    for imp in imports:
        src, dst = layer[imp.source], layer[imp.target]
        if imp.source.split(".")[0] == LIBRARY and imp.target.split(".")[0] in PLUGINS:
            problems["upward"].append(
                f"{imp.where(root)} {imp.source} imports the plugin {imp.target} (use the registry)"
            )
        elif src and dst and dst[1] > src[1]:
            problems["upward"].append(f"{imp.where(root)} {imp.source} ({src[0]}) imports {imp.target} ({dst[0]})")
    comments: dict[Path, tuple[set[int], set[int]]] = {}
    for imp in imports:
        if not imp.local:
            continue
        anywhere, alone = comments.setdefault(imp.path, _comment_lines(imp.path))
        lines = range(imp.node.lineno, (imp.node.end_lineno or imp.node.lineno) + 1)
        if not (any(n in anywhere for n in lines) or imp.node.lineno - 1 in alone):
            problems["local"].append(f"{imp.where(root)} {imp.source} imports {imp.target} inside a function")
    problems["local"] = sorted(set(problems["local"]), key=lambda p: (p.split(":")[0], int(p.split(":")[1].split()[0])))
    return problems


def _architecture() -> str:
    return (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def test_every_module_has_a_layer():
    missing = _layering_problems(ROOT, _architecture())["unplaced"]
    assert not missing, "add these modules to the Layers table of docs/ARCHITECTURE.md:\n  " + "\n  ".join(missing)


def test_no_import_cycles():
    cycles = _layering_problems(ROOT, _architecture())["cycles"]
    assert not cycles, (
        "import cycles (function-local imports included; move the function to where its concept lives):\n  "
        + "\n  ".join(cycles)
    )


def test_imports_follow_the_layer_table():
    upward = _layering_problems(ROOT, _architecture())["upward"]
    assert not upward, (
        "imports against the Layers table of docs/ARCHITECTURE.md (a module imports only from its own "
        "layer or below):\n  " + "\n  ".join(upward)
    )


def test_function_local_project_imports_say_why():
    local = _layering_problems(ROOT, _architecture())["local"]
    assert not local, (
        "function-local imports of project modules without a comment: hoist each to the top of its file, "
        "or say on its line (or the line above) which heavy or optional third-party import it keeps "
        "out of module import:\n  " + "\n  ".join(local)
    )


def test_the_layering_checks_find_planted_breaks(tmp_path):
    """On a small tree with one of each break planted, each check reports exactly that break."""
    files = {
        "curator/__init__.py": "",
        "curator/base.py": "import os\n\n\ndef f():\n    from curator.upper import g\n\n    return g\n",
        "curator/upper.py": (
            "from curator import base\n"  # upper -> base at the top: with base's local import, a cycle
            "from . import peer\n"
            "import strategies.plug\n\n\n"
            "def g():\n"
            "    import json\n\n"
            "    from curator.peer import h  # lazy: pulls in torch\n\n"
            "    return json, h, base, peer, strategies\n"
        ),
        "curator/peer.py": "def h():\n    # lazy: pulls in pandas\n    from curator.leaf import f\n\n    return f\n",
        "curator/leaf.py": "f = 1\n",
        "curator/stray.py": "",
        "strategies/__init__.py": "",
        "strategies/plug.py": "import os\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "loops").mkdir()
    doc = (
        "# x\n\n## Layers\n\n| layer | rank | modules |\n| --- | --- | --- |\n"
        "| low | 0 | `curator`, `curator.base`, `curator.peer`, `curator.leaf` (helpers) |\n"
        "| high | 1 | `curator.upper` |\n| plugins | 2 | `strategies.*`, `loops.*` |\n\n## Next\n"
    )
    problems = _layering_problems(tmp_path, doc)
    assert problems["unplaced"] == ["curator/stray.py: curator.stray is in no row of the Layers table"]
    assert problems["cycles"] == [
        "cycle of 2 (curator.base, curator.upper); shortest through curator.base: "
        "curator.base (curator/base.py:5) -> curator.upper (curator/upper.py:1) -> curator.base; its imports:\n"
        "      curator/base.py:5 curator.base -> curator.upper\n"
        "      curator/upper.py:1 curator.upper -> curator.base"
    ]
    assert problems["upward"] == [
        "curator/base.py:5 curator.base (low) imports curator.upper (high)",
        "curator/upper.py:3 curator.upper imports the plugin strategies.plug (use the registry)",
    ]
    # base's local import has no comment; upper's and peer's say why (same line / line above)
    assert problems["local"] == ["curator/base.py:5 curator.base imports curator.upper inside a function"]


# ---------------------------------------------------------------------------------- function sizes
# No public function takes more than MAX_PARAMS parameters (self / cls not counted; pass a settings
# object whole instead), and no function body (docstring not counted) runs past MAX_BODY lines
# (split it into named phases). click commands are exempt from the parameter count: click hands
# every option to the command as one parameter. What stays over has a reason here, one line each.

MAX_PARAMS = 10
MAX_BODY = 80
SIZE_ALLOWED = {
    "curator/dynamics/ledger.py:Ledger.from_arrays": "one keyword per optional ledger column (its arrays)",
    "curator/dynamics/tracker.py:DynamicsTracker.__init__": (
        "the tracker's unit tests set each mode alone; every caller above it passes MeasureSettings whole"
    ),
    "curator/engine.py:train_and_track": "11, each a settings object or collaborator (the round's inputs)",
    "curator/engine.py:track_premem": "11, each a settings object or collaborator (train_and_track's, plus out_dir)",
    "curator/models/moe.py:tiny_moe": "the sizes of a test model (layers, widths, experts), as transformers' configs",
    "curator/sampling/vllm.py:VLLMSampler.__init__": "vLLM's own LLM(...) keywords, passed through",
    "curator/signals.py:Signals.__init__": "each signal's collaborator (model, sampler, encoder, cache), all optional",
    "curator/dynamics/ledger.py:_validate": "one check per ledger column, in column order; each a few lines",
    "curator/tracking/compare.py:compare_curves": "one figure: per-panel drawing steps that share axes state",
}


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return fn.end_lineno - body[0].lineno + 1 if body and fn.end_lineno else 0


def _is_click_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in ("command", "group"):
            return True
    return False


def _size_problems(root: Path) -> list[str]:
    """Every function over the limits under ``root``'s packages, as ``file:Qual.name: why``."""
    problems = []

    def visit(node: ast.AST, path: Path, prefix: str, public: bool, method: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.", public and not child.name.startswith("_"), True)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(root)}:{prefix}{child.name}"
                a = child.args
                params = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
                if method and params[:1] in (["self"], ["cls"]):
                    params = params[1:]
                is_public = public and (not child.name.startswith("_") or child.name == "__init__")
                if is_public and len(params) > MAX_PARAMS and not _is_click_command(child):
                    problems.append(f"{where}: {len(params)} parameters (> {MAX_PARAMS}; pass settings whole)")
                if _body_lines(child) > MAX_BODY:
                    problems.append(f"{where}: a {_body_lines(child)}-line body (> {MAX_BODY}; split into phases)")

    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            visit(ast.parse(path.read_text(encoding="utf-8")), path, "", True, False)
    return problems


def test_functions_are_small_or_say_why():
    problems = _size_problems(ROOT)
    over = [p for p in problems if p.split(": ")[0] not in SIZE_ALLOWED]
    assert not over, "functions over the size limits (split them, or add a reason to SIZE_ALLOWED):\n  " + "\n  ".join(
        over
    )
    stale = sorted(set(SIZE_ALLOWED) - {p.split(": ")[0] for p in problems})
    assert not stale, "SIZE_ALLOWED entries that are within the limits now (remove them):\n  " + "\n  ".join(stale)


def test_the_size_check_finds_planted_breaks(tmp_path):
    """A planted tree: each limit is reported once, where it is broken, and nothing else is."""
    many = ", ".join(f"a{i}" for i in range(11))
    long_body = "".join(f"    x{i} = {i}\n" for i in range(81))  # 81 lines: reported
    short_body = "".join(f"    x{i} = {i}\n" for i in range(80))  # 80 lines: fine
    files = {
        "curator/__init__.py": "",
        "curator/wide.py": (
            f"def wide({many}):\n    pass\n\n\n"  # 11 parameters: reported
            f"def _private({many}):\n    pass\n\n\n"  # private: its parameters are its module's business
            "class Tool:\n"
            f"    def __init__(self, {', '.join(f'a{i}' for i in range(10))}):\n        pass\n"  # 10 + self: fine
        ),
        "curator/cli.py": f"import click\n\n\n@click.command()\ndef cmd({many}):\n    pass\n",
        "curator/long.py": f'def long():\n    """Doc."""\n{long_body}\n\ndef short():\n    """Doc."""\n{short_body}',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for pkg in PLUGINS:
        (tmp_path / pkg).mkdir()
    assert _size_problems(tmp_path) == [
        "curator/long.py:long: a 81-line body (> 80; split into phases)",
        "curator/wide.py:wide: 11 parameters (> 10; pass settings whole)",
    ]
