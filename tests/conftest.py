"""Process-wide settings for the test suite, applied before any test imports JAX, and fixtures
shared across test folders."""

import atexit
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests import codegen

# The suite runs on the host's CPU backend. With the accelerators extra installed, JAX would
# otherwise try the CUDA plugin (a logged traceback on a machine without a GPU) and libtpu (which
# takes a machine-wide lock, failing the next process that wants it). Deviceless TPU and GPU
# compiles (tests/test_targets.py) work under these settings; a test process holds no TPU, so
# it need not take libtpu's one-process lock either. Both can be overridden from outside.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# Compiling is most of the suite's time. Where a program recurs (the resume and multi-process
# tests compile one run in several processes), JAX's persistent compilation cache (keyed by the
# program, its options and the compiler's version, so a hit is the program a compile would give)
# compiles it once per `pytest` run; most tests' programs differ, and a full run takes about 1
# compile in 14 from it. Deviceless TPU and GPU compiles are written but never read back: JAX
# cannot load an executable compiled without a device client. The first process sets the
# directory; pytest-xdist's workers and the processes tests start inherit it, and it is removed
# when that process exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="polyformer-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

# The suite's programs are tiny and run for microseconds, so XLA's optimisation of them costs
# more than it saves: on XLA:CPU it is about half of each compile, and without it the suite takes
# a fifth less time. What a test computes changes by float32 rounding only, within every
# tolerance. The official-size parity tests, whose programs run for seconds, compile with full
# optimisation (the `optimized` fixture). Processes that tests start inherit the setting.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# The suite's XLA:CPU code generation (tests/codegen.py); processes that tests start inherit it.
if codegen.FLAG not in os.environ.get("XLA_FLAGS", ""):
    flags = (os.environ.get("XLA_FLAGS", ""), codegen.SUITE_XLA_FLAGS)
    os.environ["XLA_FLAGS"] = " ".join(flags).strip()


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


@pytest.fixture
def optimized():
    """XLA's full optimisation for the compiles of this test (the suite's default is JAX's
    `jax_disable_most_optimizations`, above)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
