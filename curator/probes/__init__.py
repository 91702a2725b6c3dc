"""Response-family probes (Ren & Sutherland, arXiv 2407.10490): which responses' log-probabilities
a finetuning update moves, tracked through SFT, extended SFT and DPO. docs/PROBES.md.

Importing this package does not import torch.
"""

from curator.probes.families import (
    FAMILIES,
    ProbeSet,
    build_probe_set,
    greedy_responses,
    shuffle_words,
)
from curator.probes.preferences import (
    PreferenceRow,
    load_preferences,
    synthetic_preferences,
)
from curator.probes.scoring import (
    PROBE_COLUMNS,
    ProbeLogger,
    family_curves,
    read_probe_table,
    score_targets,
)

__all__ = [
    "FAMILIES",
    "PROBE_COLUMNS",
    "PreferenceRow",
    "ProbeLogger",
    "ProbeSet",
    "build_probe_set",
    "family_curves",
    "greedy_responses",
    "load_preferences",
    "read_probe_table",
    "score_targets",
    "shuffle_words",
    "synthetic_preferences",
]
