"""TFDS builders for data made from the installed software: nothing is downloaded.

Importing this package registers the builders with TFDS, so `tfds.builder("python_stdlib")` and
`tfds.data_source("python_stdlib", download=True)` find them. They write array_record files,
which TFDS writes and reads without TensorFlow.
"""

import os
from pathlib import Path

from polyformer.datasets.digits import DigitsConfig, SklearnDigits
from polyformer.datasets.embedded import EmbeddedBuilder
from polyformer.datasets.python_stdlib import PythonStdlib, StdlibConfig
from polyformer.datasets.spoken_digits import SpokenDigits, SpokenDigitsConfig
from polyformer.datasets.table_questions import TableQuestions, TableQuestionsConfig


def default_data_dir() -> Path:
    """$POLYFORMER_DATA if set, else ~/.cache/polyformer/tensorflow_datasets."""
    if "POLYFORMER_DATA" in os.environ:
        return Path(os.environ["POLYFORMER_DATA"])
    return Path.home() / ".cache" / "polyformer" / "tensorflow_datasets"


__all__ = [
    "EmbeddedBuilder",
    "DigitsConfig",
    "PythonStdlib",
    "SpokenDigits",
    "SpokenDigitsConfig",
    "SklearnDigits",
    "StdlibConfig",
    "TableQuestions",
    "TableQuestionsConfig",
    "default_data_dir",
]
