"""Checkpoints with orbax's CheckpointManager: one tree per step, {state, data}.

`state` is the TrainState (parameters, optimizer state, step, root rng); `data` is the input
iterator's state as JSON. Saving is asynchronous; restoring takes an abstract state whose leaves
carry the target shardings, so a run saved on one mesh restores onto another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
    """A checkpoint in the run's directory that another model or optimizer wrote."""


class Checkpointer:
    """Periodic, keep-last-N, asynchronous checkpoints of a training run.

    Args:
      directory: where step folders go (created).
      keep: how many recent checkpoints to keep.
      every: save when `step % every == 0` (None: only when forced).
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, every: int | None = None):
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving in the background; returns whether a save was started."""
        if not force and (self.every is None or step % self.every):
            return False
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, data_state) of `step` (default: the latest), placed as `abstract_state`'s
        shardings say (jax.ShapeDtypeStruct leaves with `sharding`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, TypeError) as error:
            # orbax's own message advises strict=False, which would load a mismatched model.
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise CheckpointMismatch(
                f"the checkpoint of step {step} in {self.directory} does not fit this run's model "
                f"and optimizer (was another model size trained there?); use another out_dir, "
                f"or the run config that wrote it ({reason})"
            ) from None
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
