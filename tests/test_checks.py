"""Lint, format and type checks on curator/ (configured in pyproject.toml, baseline included).

They run with the tests so that the README's one test command is also CI's lint and type check.
To fix a failure: `ruff check --fix curator`, `ruff format FILE`, or the type error mypy names.
"""

from __future__ import annotations

import subprocess
import sys
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
