"""Random-access records of TFDS datasets, read without TensorFlow.

One path for both kinds of dataset: polyformer's embedded ones (`polyformer.datasets`, built on
first use from files on this machine) and real TFDS datasets that a user has prepared in
array_record format (`tfds build NAME --file_format=array_record`) on a machine with internet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from polyformer.datasets import EmbeddedBuilder, default_data_dir


def data_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    **builder_kwargs: Any,
) -> Sequence[dict[str, Any]]:
    """The records of `split` of TFDS dataset `name` ("name", "name/config" or "name:1.0.0") in
    `data_dir` (default: `polyformer.datasets.default_data_dir()`), as a random-access sequence:
    `len(source)`, `source[i]`. Text features come back as UTF-8 `bytes`.

    An embedded dataset is built first if it is not yet; any other must already be prepared,
    because nothing is downloaded here. `builder_kwargs` go to `tfds.builder` (e.g. `config=`).
    """
    data_dir = os.fspath(data_dir or default_data_dir())
    builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    if isinstance(builder, EmbeddedBuilder):
        builder.download_and_prepare()  # A no-op once built.
    elif not builder.is_prepared():
        raise FileNotFoundError(
            f"{name} is not prepared in {data_dir}; prepare it where there is internet with "
            f"`tfds build {name} --file_format=array_record --data_dir=...` and copy it here"
        )
    return builder.as_data_source(split=split)


def texts(source: Sequence[dict[str, Any]], text_key: str = "text") -> Iterator[str]:
    """The `text_key` feature of every record of `source`, in order, decoded to `str`."""
    for i in range(len(source)):
        text = source[i][text_key]
        yield text.decode("utf-8") if isinstance(text, bytes) else str(text)
