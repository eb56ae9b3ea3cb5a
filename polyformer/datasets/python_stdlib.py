"""The Python standard library's own source files as a text corpus, split by file.

Every `.py` file under `sysconfig.get_paths()["stdlib"]` is one example `{"path", "text"}`, with
third-party packages (site-packages, dist-packages) and the standard library's own test suites
left out. A file goes to validation when a stable hash of its relative path says so, so the split
does not move when files are added or `max_files` changes. The corpus is whatever the running
interpreter ships, so the config is named after its version (`py3.11`): corpora of different
interpreters never mix in one data_dir.
"""

from __future__ import annotations

import dataclasses
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from polyformer.datasets.embedded import EmbeddedBuilder, split_of

# Directories that are not the standard library's own source, or are its tests (a third of the
# files, mostly fixtures rather than code worth modelling).
_SKIPPED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


@dataclasses.dataclass
class StdlibConfig(tfds.core.BuilderConfig):
    """`max_files`: keep only this many files, spread evenly over the sorted list (None: all).
    `validation_percent`: the share of files, by path hash, that go to validation."""

    max_files: int | None = None
    validation_percent: int = 5


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path, max_files: int | None = None) -> list[str]:
    """Relative paths of the standard library's `.py` files, sorted; `max_files` of them taken
    at an even stride so that a small corpus still spans many packages."""
    paths = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if not _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1])
    )
    if max_files is not None and max_files < len(paths):
        stride = len(paths) / max_files
        paths = [paths[int(i * stride)] for i in range(max_files)]
    return paths


def _config_name() -> str:
    return f"py{sys.version_info.major}.{sys.version_info.minor}"


class PythonStdlib(EmbeddedBuilder):
    """The running interpreter's standard library source, one example per file."""

    BUILDER_CONFIGS = [
        StdlibConfig(name=_config_name(), description="Every standard library source file."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly, not `dataset_info_from_configs`: that one reads metadata files
        # from a directory per dataset, and our builders share one package.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"path": tfds.features.Text(), "text": tfds.features.Text()}
            ),
            homepage="https://docs.python.org/3/library/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: the files ship with the interpreter.
        config = self.builder_config
        by_split = {"train": [], "validation": []}
        for path in stdlib_files(stdlib_root(), config.max_files):
            by_split[split_of(path, config.validation_percent)].append(path)
        return {split: self._generate_examples(paths) for split, paths in by_split.items()}

    def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
        root = stdlib_root()
        for path in paths:
            # tokenize.open honours a file's coding cookie, as the interpreter does.
            with tokenize.open(root / path) as f:
                yield path, {"path": path, "text": f.read()}
