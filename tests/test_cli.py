"""The `polyformer` command: training from a run config, a command for every family, and the
modules a run imports."""

import dataclasses
import shlex
import subprocess
import sys
import textwrap

import polyformer as pf
from polyformer import cli
from polyformer.models import FAMILIES

CONFIG = """
import dataclasses

import numpy as np

from polyformer.models.gpt import GPT2Config
from polyformer.training.config import RunConfig
from polyformer.training.data import ArrayData


@dataclasses.dataclass(frozen=True)
class Counting:
    # Sequences that count up from a random start modulo 16: easy to learn.
    examples: int = 64

    def load(self):
        starts = np.random.default_rng(0).integers(0, 16, self.examples)
        rows = (starts[:, None] + np.arange(9)) % 16
        pairs = {"inputs": rows[:, :-1], "targets": rows[:, 1:]}
        return ArrayData(pairs, pairs, tokens_per_example=8, model_overrides={"vocab_size": 16})


def config():
    model = GPT2Config(n_positions=8, n_embd=16, n_layer=1, n_head=2)
    return RunConfig(
        model=model, data=Counting(), steps=6, batch_size=8, eval_every=3, eval_batches=2,
        checkpoint_every=3, log_every=3, out_dir=OUT,
    )
"""


def test_polyformer_train_runs_a_config_whose_data_is_arrays(tmp_path, capsys):
    file = tmp_path / "counting.py"
    file.write_text(textwrap.dedent(CONFIG).replace("OUT", repr(str(tmp_path / "run"))))
    assert cli.main(["train", str(file), "--set", "data.examples=32"]) == 0
    out = capsys.readouterr().out
    assert "step 6: train loss" in out and "sample" not in out  # no tokenizer, no sample
    assert f"generate {tmp_path / 'run' / 'model'}" in out  # how to try the exported model
    model = pf.from_pretrained(tmp_path / "run" / "model")
    assert model.config.vocab_size == 16 and model.config.n_layer == 1
    assert dataclasses.asdict(model.config)["n_positions"] == 8


def test_every_family_has_a_command_and_says_how_to_try_a_trained_model():
    for family in FAMILIES.values():
        words = shlex.split(family.try_command.format(model="out/model"))
        args = cli.parser().parse_args(words)  # the try-line is a valid command line
        assert args.command == family.command and args.checkpoint == "out/model"


def test_a_run_s_modules_leave_pandas_unimported():
    """In a fresh process (the suite's own has imported pandas already): pandas takes a quarter
    of a second to import, and only table data needs it, so every module a run or a command can
    import without tables imports it lazily."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import polyformer.datasets, polyformer.training.data
        names = ["polyformer.cli", "polyformer.pipelines", "polyformer.training.trainer"]
        for package in (polyformer.datasets, polyformer.training.data):
            prefix = package.__name__ + "."
            names += [module.name for module in pkgutil.iter_modules(package.__path__, prefix)]
        for name in names:
            importlib.import_module(name)
            assert "pandas" not in sys.modules, f"importing {name} imported pandas"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
