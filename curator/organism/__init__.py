"""The model organism: a small Llama pretrained from scratch on curator's synthetic corpus with
uneven skills, so curation strategies can be compared with statistical power on a CPU
(docs/ORGANISM.md). ``load_model("organism")`` builds it on first use and caches it. Its reports
(per-skill accuracy, skills each strategy chose) are a driver: `curator.drivers.organism_report`."""

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

__all__ = [
    "ALIAS",
    "OrganismConfig",
    "build",
    "check_config",
    "config_from_dict",
    "organism_dir",
    "parse_spec",
    "weights_hash",
]
