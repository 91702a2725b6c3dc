"""Generalization analysis: predict test accuracy from training dynamics, robustness probes,
ledger import (DESIGN §1, claims 1 and 2). See docs/ANALYSIS.md.

Submodules import pandas/numpy only; models load inside the functions that need them.
"""

from curator.analysis.imports import import_arrays, import_ledger, import_long
from curator.analysis.predict import (
    Fit,
    PredictionReport,
    Run,
    atc_predict,
    find_runs,
    linear_fit,
    load_run,
    make_run,
    metric_table,
    predict,
    write_report,
    write_run,
)
from curator.analysis.robustness import RobustnessReport, robustness

__all__ = [
    "Fit",
    "PredictionReport",
    "Run",
    "RobustnessReport",
    "atc_predict",
    "find_runs",
    "import_arrays",
    "import_ledger",
    "import_long",
    "linear_fit",
    "load_run",
    "make_run",
    "metric_table",
    "predict",
    "robustness",
    "write_report",
    "write_run",
]
