"""`polyformer compile`: tiny runs of every family compiled for a TPU and a GPU target."""

import dataclasses
import functools
import json
import re

import pytest

from polyformer.lora import LoraConfig
from polyformer.training import compile as compile_run
from polyformer.training import config as run_config
from polyformer.training.data import TextData
from polyformer.training.data.synthetic import ArraySpec
from polyformer.training.sharding import MeshConfig
from tests import tiny_runs

FSDP = MeshConfig(data=1, fsdp=-1)


def _check(report, config, target, devices):
    assert report.target == target and report.devices == devices
    assert report.mesh == {"data": 1, "fsdp": devices, "tensor": 1}
    assert report.fits
    assert report.train.arguments > 0 and report.train.total > report.train.arguments
    assert report.step_flops > 0 and report.compiled_flops > 0 and report.bytes_accessed > 0
    assert 0 < report.mfu_bound <= 1
    assert report.roofline_step_seconds > 0
    tokens = config.data.tokens_per_example
    assert report.tokens_per_step == config.batch_size * tokens


def tiny_model(family: str, target: str):
    """The tiny model of `family` as the compile tests build it. GPT-2 keeps its unscanned layers;
    the other families scan theirs (scan_layers), so that both stacks compile for both kinds of
    target (and the compilers see one layer instead of two: about a sixth less compile time).

    On a GPU target, widths that XLA:GPU's Triton matmuls tile (multiples of 16): with no device
    to autotune on, XLA:GPU cannot tile the tiny configs' 36 (CLIP's text 24), and compile_run
    compiles the step a second time without Triton GEMM. ViT keeps its width 36: the one GPU case
    that goes through that fallback."""
    model = tiny_runs.RUNS[family][0]
    if family == "gpt2":
        return model
    model = dataclasses.replace(model, scan_layers=True)
    if not target.startswith("h100"):
        return model
    if family == "clip":
        text = dataclasses.replace(model.text_config, hidden_size=32, intermediate_size=64)
        vision = dataclasses.replace(model.vision_config, hidden_size=48, intermediate_size=96)
        return dataclasses.replace(model, text_config=text, vision_config=vision)
    if family in ("wav2vec2", "tapas"):
        return dataclasses.replace(model, hidden_size=48, intermediate_size=96)
    return model


# GPT-2 on both kinds of target runs by default; the other families' compiles are marked heavy.
CASES = [
    pytest.param(f, t, n, marks=() if f == "gpt2" else pytest.mark.heavy)
    for f in tiny_runs.FAMILIES
    for t, n in (("v5e-4", 4), ("h100x8", 8))
]


def packed(config):
    """`config` with TextData(pack=True)'s extra keys (segment ids, positions, weights)."""
    length = config.data.tokens_per_example
    packing = (
        ArraySpec("segment_ids", (length,), high=3),
        ArraySpec("positions", (length,), high=length),
        ArraySpec("weights", (length,), "float32"),
    )
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, arrays=(*config.data.arrays, *packing))
    )


@functools.cache
def compiled(family: str, target: str):
    """(run config, compile_run's report) of a family's tiny run on a target, compiled once.
    GPT-2's batches are packed documents, so that the kernels' segment ids go through the
    compiled step on each target."""
    config = tiny_runs.run_config(
        family, tiny_model(family, target), mesh=FSDP, precision="bfloat16"
    )
    if family == "gpt2":
        config = packed(config)
    return config, compile_run.compile_run(config, target, with_eval=False)


@pytest.mark.parametrize("family, target, devices", CASES)
def test_every_family_s_train_step_compiles_for_tpu_and_gpu(family, target, devices):
    config, report = compiled(family, target)
    _check(report, config, target, devices)


def test_a_lora_run_compiles_with_optimizer_state_for_its_adapters_only():
    config, full = compiled("gpt2", "v5e-4")
    adapted = dataclasses.replace(config, lora=LoraConfig(rank=4))
    adapted = compile_run.compile_run(adapted, "v5e-4", with_eval=False)
    # The full run's arguments hold the parameters and AdamW's two moments of each; the LoRA
    # run's hold the parameters once, plus the small adapters and their moments.
    assert adapted.train.arguments < 0.5 * full.train.arguments


CONFIG_FILE = """
from tests import tiny_runs
from polyformer.training.sharding import MeshConfig

def config():
    return tiny_runs.run_config("gpt2", mesh=MeshConfig(data=1, fsdp=-1), precision="bfloat16")
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny_gpt.py"
    path.write_text(CONFIG_FILE)
    return path


def test_the_command_writes_the_json_keys(config_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    status = compile_run.main([str(config_file), "--target", "v5e-4", "--json", str(out)])
    assert status == 0
    figures = json.loads(out.read_text())
    assert tuple(figures) == compile_run.JSON_KEYS
    assert set(figures["bytes_per_device"]) == {"arguments", "outputs", "temp"}
    assert figures["fits"] is True and figures["refused"] is False and figures["devices"] == 4
    assert figures["hbm_bytes_per_device"] == 16 * 2**30
    printed = capsys.readouterr().out
    assert "eval step" in printed and "MFU bound" in printed


def test_a_run_that_does_not_fit_exits_1_naming_its_largest_buffers(config_file, capsys):
    # 2^19 sequences: the float32 logits alone are 8.6 GB per chip.
    argv = [str(config_file), "--target", "v5e-4", "--set", f"batch_size={2**19}"]
    assert compile_run.main(argv) == 1
    printed = capsys.readouterr().out
    assert "does not fit" in printed and "largest buffers" in printed
    assert re.search(r"\d+\.\d\d GiB: \w+\[", printed)  # a buffer of at least 1 GiB, by shape
    assert "batch_size" in printed and "remat" in printed
    # The TPU compiler refuses this step, which leaves no program to give a roofline.
    assert "the compiler refused the train step" in printed and "MFU bound" not in printed


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"mesh": MeshConfig(data=3, fsdp=1)}, compile_run.MeshMismatchError, "has 4 devices"),
        ({"batch_size": 6}, compile_run.BatchSplitError, "multiple of 4"),
        (
            {"batch_size": 8, "optimizer": dataclasses.replace(
                tiny_runs.run_config("gpt2").optimizer, accumulation_steps=4)},
            compile_run.BatchSplitError,
            "2 per micro-batch",
        ),
        ({"data": TextData()}, compile_run.NoDataShapesError, "TextData"),
    ],
)  # fmt: skip
def test_a_run_that_cannot_be_laid_out_is_one_clear_error(change, error, message):
    config = dataclasses.replace(tiny_runs.run_config("gpt2", mesh=FSDP), **change)
    with pytest.raises(error, match=message):
        compile_run.compile_run(config, "v5e-4")


def test_an_unknown_target_is_an_error_before_anything_compiles(config_file, capsys):
    assert compile_run.main([str(config_file), "--target", "tpu-v9"]) == 2
    assert "known targets: v4-8" in capsys.readouterr().err


def test_mesh_candidates_cover_the_devices():
    shapes = compile_run.mesh_candidates(8)
    assert {(m.data, m.fsdp, m.tensor) for m in shapes} == {
        (8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1), (4, 1, 2), (2, 2, 2), (1, 4, 2),
        (2, 1, 4), (1, 2, 4), (1, 1, 8),
    }  # fmt: skip


def _report(mesh, temp, flops):
    memory = compile_run.StepMemory(2**30, 0, 0, temp, 0)
    return compile_run.CompileReport(
        "v5e-4", 4, mesh, 16 * 2**30, memory, None, 1.0, 4 * flops, flops, 0.0, 8, ()
    )


def test_search_ranks_fitting_meshes_first_then_by_step_time(monkeypatch):
    made = {}

    def fake(config, target):
        m = config.mesh
        if m.tensor == 4:  # as if the batch did not split over this mesh: search skips it
            raise compile_run.BatchSplitError("does not split")
        report = _report(
            {"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor},
            temp=(40 if m.data == 4 else 1) * 2**30,
            flops=1e12 * (m.tensor + m.data),
        )
        made[(m.data, m.fsdp, m.tensor, config.model.remat)] = report
        return report

    monkeypatch.setattr(compile_run, "compile_run", fake)
    ranked = compile_run.search(tiny_runs.run_config("gpt2"), "v5e-4", log=lambda _: None)
    assert len(ranked) == len(made) and not [k for k in made if k[:3] == (1, 1, 4)]
    fits = [r.fits for r in ranked]
    assert fits == sorted(fits, reverse=True) and not ranked[-1].fits
    fitting = [r.roofline_step_seconds for r in ranked if r.fits]
    assert fitting == sorted(fitting)


@pytest.mark.parametrize(
    "name, layers, per_device", [("gpt2_124m", 12, 8), ("gpt2_medium", 24, 8), ("gpt2_xl", 48, 8)]
)
def test_the_pod_configs_compile_from_shapes_alone(name, layers, per_device):
    config = run_config.load(f"experiments/configs/{name}.py")
    data = compile_run.data_shapes(config)
    assert config.model.n_layer == layers and config.precision == "bfloat16"
    model = config.model
    assert model.attn_pdrop == model.resid_pdrop == model.embd_pdrop == 0.0  # pretraining
    assert dict(data.model_overrides) == {"vocab_size": 50257}
    assert {a.name: a.shape for a in data.arrays} == {"inputs": (1024,), "targets": (1024,)}
    devices = 8 if name == "gpt2_124m" else 16  # h100x8; v5e-16
    assert config.batch_size == per_device * devices


def test_a_refused_step_has_no_roofline_in_rows_json_or_ranking():
    gib = 2**30
    refused = compile_run.CompileReport(
        target="v5e-4", devices=4, mesh={"data": 1, "fsdp": 4, "tensor": 1},
        hbm_bytes_per_device=16 * gib, train=compile_run.StepMemory(gib, gib, gib, 30 * gib, 0),
        eval=None, compile_seconds=1.0, step_flops=1e12, compiled_flops=0.0, bytes_accessed=0.0,
        tokens_per_step=8, largest_buffers=(),
    )  # fmt: skip
    too_big = dataclasses.replace(refused, compiled_flops=1e11, bytes_accessed=1e9)
    assert refused.refused and not too_big.refused and not too_big.fits
    assert compile_run.row(refused).split()[-2:] == ["refused", "-"]
    figures = refused.to_json()
    assert figures["refused"] is True
    assert figures["roofline_step_seconds"] is None and figures["mfu_bound"] is None
    # Among runs that do not fit, one with a program to count ranks before a refused one.
    ranked = sorted([refused, too_big], key=compile_run.rank_key)
    assert ranked == [too_big, refused]
