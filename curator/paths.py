"""Where curator keeps files of its own outside a run directory (foundation layer: no project imports).

The cache of converted models (SmolLM2 from GGUF, built organisms) is read by `curator.models` and
written by `curator.organism`; one definition here keeps the two from drifting apart.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """Where converted models are cached: ``$CURATOR_CACHE`` (``off`` disables) or ~/.cache/curator."""
    env = os.environ.get("CURATOR_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "curator"
    return base / "models"
