"""A run's metric records, in metrics.jsonl and in TensorBoard's event files, and the writer's
import of tensorboardX without torch."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from polyformer.training import metrics


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of the event files in `directory`. Each record of an event file is
    its length (8 bytes, little-endian), a checksum of the length (4), an Event protobuf and a
    checksum of it (4)."""
    found = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_each_record_goes_to_the_jsonl_and_to_tensorboard_as_split_slash_name(tmp_path):
    writer = metrics.MetricsWriter(tmp_path)
    writer.write(1, "train", {"loss": 2.5, "learning_rate": 0.001})
    writer.write(2, "train", {"loss": 2.0, "learning_rate": 0.002})
    writer.write(2, "eval", {"loss": 2.25})
    writer.close()
    assert metrics.read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 1, "split": "train", "loss": 2.5, "learning_rate": 0.001},
        {"step": 2, "split": "train", "loss": 2.0, "learning_rate": 0.002},
        {"step": 2, "split": "eval", "loss": 2.25},
    ]
    # TensorBoard keeps float32 values.
    assert scalars(tmp_path / "tensorboard") == {
        "train/loss": [(1, 2.5), (2, 2.0)],
        "train/learning_rate": [(1, pytest.approx(0.001)), (2, pytest.approx(0.002))],
        "eval/loss": [(2, 2.25)],
    }


def test_a_second_writer_appends_to_the_jsonl(tmp_path):
    for step in (1, 2):
        writer = metrics.MetricsWriter(tmp_path)
        writer.write(step, "train", {"loss": 1.0})
        writer.close()
    assert [r["step"] for r in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_the_writer_leaves_torch_unimported_and_importable(tmp_path):
    """In a fresh process (the test's own has imported torch already)."""
    code = (
        "import sys\n"
        "from polyformer.training import metrics\n"
        f"writer = metrics.MetricsWriter({str(tmp_path)!r})\n"
        "writer.write(1, 'train', {'loss': 1.0})\n"
        "writer.close()\n"
        "assert 'torch' not in sys.modules, 'tensorboardX imported torch'\n"
        "import torch\n"
        "assert torch.ones(2).sum().item() == 2\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert scalars(tmp_path / "tensorboard") == {"train/loss": [(1, 1.0)]}
