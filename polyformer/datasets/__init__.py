"""TFDS builders for corpora that ship with the installed software: nothing is downloaded.

Importing this package registers the builders with TFDS, so `tfds.builder("python_stdlib")` and
`tfds.data_source("python_stdlib", download=True)` find them. They write array_record files,
which TFDS writes and reads without TensorFlow.
"""

import os
from pathlib import Path

from polyformer.datasets.digits import DigitsConfig, SklearnDigits
from polyformer.datasets.python_stdlib import PythonStdlib, StdlibConfig
from polyformer.datasets.spoken_digits import SpokenDigits, SpokenDigitsConfig

# The builders whose data are made on this machine, so preparing them never needs the network.
EMBEDDED = (PythonStdlib, SklearnDigits, SpokenDigits)


def default_data_dir() -> Path:
    """$POLYFORMER_DATA if set, else ~/.cache/polyformer/tensorflow_datasets."""
    if "POLYFORMER_DATA" in os.environ:
        return Path(os.environ["POLYFORMER_DATA"])
    return Path.home() / ".cache" / "polyformer" / "tensorflow_datasets"


__all__ = [
    "EMBEDDED",
    "DigitsConfig",
    "PythonStdlib",
    "SpokenDigits",
    "SpokenDigitsConfig",
    "SklearnDigits",
    "StdlibConfig",
    "default_data_dir",
]
