"""Fixtures shared across test folders."""

import dataclasses
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class HubCache:
    """An offline Hugging Face cache directory."""

    path: Path

    def add(self, repo_id: str, checkpoint: Path) -> Path:
        """Puts the files of directory `checkpoint` into the cache as huggingface_hub lays a
        download out (blobs/, snapshots/<commit>/ of symlinks to them, refs/main naming the
        commit); returns the snapshot directory."""
        repo = self.path / ("models--" + repo_id.replace("/", "--"))
        commit = "0123456789abcdef0123456789abcdef01234567"
        snapshot = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        for i, file in enumerate(sorted(checkpoint.iterdir())):
            blob = repo / "blobs" / f"{i:040x}"
            blob.write_bytes(file.read_bytes())
            (snapshot / file.name).symlink_to(blob)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> HubCache:
    """An empty Hugging Face cache in tmp_path, offline (HF_HUB_CACHE, HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables when imported, which may have happened already.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return HubCache(cache)
