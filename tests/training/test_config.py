import dataclasses
from pathlib import Path

import pytest

from polyformer import cli
from polyformer.lora import LoraConfig
from polyformer.training import config as C
from polyformer.training.optim import OptimizerConfig

DEMO = "experiments/configs/gpt_stdlib_demo.py"


def test_overrides_reach_nested_fields_with_their_types():
    run = C.apply_overrides(
        C.load(DEMO),
        ["model.n_layer=2", "attention=favor", "optimizer.learning_rate=1e-3", "mesh.fsdp=2",
         "model.pad_token_id=None", "out_dir=/tmp/x", "optimizer.grad_clip=None"],
    )  # fmt: skip
    assert run.model.n_layer == 2 and run.attention == "favor"
    assert run.optimizer.learning_rate == 1e-3 and run.mesh.fsdp == 2
    assert run.model.pad_token_id is None and run.optimizer.grad_clip is None
    assert run.out_dir == "/tmp/x"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.n_layers=3", "unknown config key 'model.n_layers'; valid keys: .*model.n_layer"),
        ("model.n_layer=1.5", "expected int"),
        ("steps=many", "not a valid value"),
        ("attention=linear", "attention='linear' is not one of dense, favor"),
        ("steps", "key=value"),
        ("precision=float16", "precision must be"),
        ("lora.rank=0", "--set lora.rank=0: rank must be a positive integer, got 0"),
        ("lora.dropout=1.0", "dropout must be in \\[0, 1\\), got 1.0"),
        ("lora.target_modules=('c_attn', 'q_proj')", "lora.target_modules \\['q_proj'\\] match no"),
        ("lora.target_modules=c_attn", "a regular expression .* give names as a tuple"),
        ("lora.ranks=2", "unknown config key 'lora.ranks'; valid keys: .*lora.rank, lora.alpha"),
    ],
)
def test_bad_overrides_are_errors_that_say_what_is_valid(assignment, message):
    with pytest.raises(ValueError, match=message):
        C.apply_overrides(C.load(DEMO), [assignment])


def test_config_files_must_define_a_run_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config file"):
        C.load(tmp_path / "missing.py")
    (tmp_path / "bad.py").write_text("def config():\n    return 3\n")
    with pytest.raises(ValueError, match="not RunConfig"):
        C.load(tmp_path / "bad.py")


def test_the_command_line_takes_several_assignments_after_one_set():
    args = cli.parser().parse_args(
        ["train", DEMO, "--set", "model.n_layer=4", "attention=favor", "--set", "steps=3"]
    )
    assert args.set == ["model.n_layer=4", "attention=favor", "steps=3"]


@pytest.mark.parametrize("path", sorted(Path("experiments/configs").glob("*.py")), ids=str)
def test_every_experiment_config_loads(path):
    try:
        run = C.load(path)
    except C.MissingExtra as error:  # a config's optional package (pyproject's experiments extra)
        pytest.skip(str(error))
    assert dataclasses.is_dataclass(run) and dataclasses.is_dataclass(run.data)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("log_every", 0, "log_every must be a positive integer, got 0"),
        ("eval_every", 0, "eval_every must be"),
        ("checkpoint_every", -1, "checkpoint_every must be"),
        ("eval_batches", 0, "eval_batches must be"),
        ("keep_checkpoints", 0, "keep_checkpoints must be"),
        ("steps", 0, "steps must be"),
        ("batch_size", 2.0, "batch_size must be a positive integer"),
        ("seed", -1, "seed must be a non-negative integer"),
        ("objective", "bogus", "objective='bogus' is no objective for gpt2 models; give one of"),
        ("objective", "ctc", "objective='ctc' does not train gpt2 models; give one of causal_lm"),
        ("out_dir", "", "out_dir must name a directory"),
        ("data", 3, "data must be a data config"),
        ("lora", 8, "lora must be a polyformer.lora.LoraConfig or None, got 8"),
        ("model", "gpt2", "model must be the config of a model family \\(gpt2, vit, "),
    ],
)
def test_every_field_is_checked_when_the_config_is_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        C.RunConfig(**{field: value})


def test_the_batch_must_split_into_the_accumulation_steps():
    with pytest.raises(ValueError, match="batch_size=6 does not split into"):
        C.RunConfig(batch_size=6, optimizer=OptimizerConfig(accumulation_steps=4))


def test_the_objective_defaults_to_the_model_familys_first():
    assert C.RunConfig().objective_name == "causal_lm"
    vit = C.load("experiments/configs/vit_digits.py")
    assert C.RunConfig(model=vit.model, data=vit.data).objective_name == "image_classification"
    assert vit.objective_name == "image_classification_mixup"


def test_lora_keys_create_the_section_with_peft_defaults():
    run = C.apply_overrides(C.load(DEMO), ["lora.rank=8"])
    assert run.lora == LoraConfig(rank=8) and run.lora.alpha == 8.0 and run.lora.dropout == 0.0
    run = C.apply_overrides(
        C.load(DEMO),
        ["lora.alpha=16", "lora.dropout=0.1", "lora.target_modules=('c_attn', 'c_fc')"],
    )
    assert run.lora == LoraConfig(
        rank=8, alpha=16.0, dropout=0.1, target_modules=("c_attn", "c_fc")
    )
