"""The model organism: a small Llama pretrained from scratch on curator's synthetic corpus with
uneven skills, so curation strategies can be compared with statistical power on a CPU
(docs/ORGANISM.md). ``load_model("organism")`` builds it on first use and caches it."""

from curator.organism.build import (
    ALIAS,
    OrganismConfig,
    build,
    check_config,
    config_from_dict,
    organism_dir,
    parse_spec,
    weights_hash,
)
from curator.organism.report import skill_accuracy

__all__ = [
    "ALIAS",
    "OrganismConfig",
    "build",
    "check_config",
    "config_from_dict",
    "organism_dir",
    "parse_spec",
    "skill_accuracy",
    "weights_hash",
]
