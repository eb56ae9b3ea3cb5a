import subprocess
import sys
import textwrap

import pytest

from polyformer.datasets import PythonStdlib, StdlibConfig
from polyformer.datasets.embedded import split_of
from polyformer.datasets.python_stdlib import stdlib_files, stdlib_root

# Few files, many of them for validation: a build of a second or two with both splits filled.
TINY = StdlibConfig(name="tiny", max_files=40, validation_percent=20)


def build(data_dir):
    builder = PythonStdlib(config=TINY, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tfds"))


def test_builds_both_splits_from_the_selected_files(builder):
    train, validation = records(builder, "train"), records(builder, "validation")
    assert len(train) + len(validation) == TINY.max_files
    assert train and validation
    paths = {r["path"].decode() for r in train + validation}
    assert paths == set(stdlib_files(stdlib_root(), TINY.max_files))
    for record in train + validation:
        path = record["path"].decode()
        assert record["text"].decode() == (stdlib_root() / path).read_text(encoding="utf-8")


def test_splits_are_disjoint_and_chosen_by_path(builder):
    for split in ("train", "validation"):
        for record in records(builder, split):
            assert split_of(record["path"].decode(), TINY.validation_percent) == split


def test_skips_site_packages_and_test_suites():
    paths = stdlib_files(stdlib_root())
    assert "os.py" in paths and "json/decoder.py" in paths
    assert not [p for p in paths if {"site-packages", "test", "tests"} & set(p.split("/"))]


def test_rebuilding_gives_the_same_records_in_the_same_order(builder, tmp_path):
    again = build(tmp_path)
    for split in ("train", "validation"):
        assert records(again, split) == records(builder, split)


def test_reads_without_tensorflow(builder):
    records(builder, "train")
    assert "tensorflow" not in sys.modules


def test_reads_by_name_with_tfds_alone(builder):
    """What a user's prepared TFDS dataset goes through: no polyformer builder class imported."""
    script = f"""
        import sys
        import tensorflow_datasets as tfds
        source = tfds.data_source("python_stdlib/tiny", split="validation",
                                  data_dir={str(builder.data_dir_root)!r})
        print(len(source), source[0]["path"].decode())
        assert "polyformer" not in sys.modules and "tensorflow" not in sys.modules
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    validation = records(builder, "validation")
    assert run.stdout.split() == [str(len(validation)), validation[0]["path"].decode()]
