"""Examples, loaders, grading and synthetic tasks (no heavy imports here)."""

from curator.data.example import Example, content_id
from curator.data.format import PromptFormat, encode_pair, encode_prompt
from curator.data.grading import Grader, GradeReport, get_grader, grade_references, graders
from curator.data.loaders import FieldMap, load_examples, rows_to_examples, save_examples
from curator.data.sources import GeneratorSource, PoolSource, Source
from curator.data.synthetic import SyntheticTask, synthetic_presets, synthetic_task

__all__ = [
    "Example",
    "content_id",
    "PromptFormat",
    "encode_pair",
    "encode_prompt",
    "Grader",
    "GradeReport",
    "get_grader",
    "grade_references",
    "graders",
    "FieldMap",
    "load_examples",
    "rows_to_examples",
    "save_examples",
    "Source",
    "PoolSource",
    "GeneratorSource",
    "SyntheticTask",
    "synthetic_presets",
    "synthetic_task",
]
