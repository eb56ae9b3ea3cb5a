"""`pf.pipeline` and the `polyformer` command on a tiny GPT-2 checkpoint with its tokenizer."""

import numpy as np
import pytest
from flax import nnx

import polyformer as pf
from polyformer import cli
from polyformer.models import FAMILIES, clip, gpt
from polyformer.training.data import save_tokenizer, train_bpe
from tests.models.gpt.reference import random_hf_model

TEXT = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"] * 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2-with-tokenizer")
    random_hf_model().save_pretrained(path)
    save_tokenizer(train_bpe(TEXT, vocab_size=300), path)
    return path


def test_text_generation_pipeline_equals_generate_then_decode(checkpoint):
    pipe = pf.pipeline("text-generation", checkpoint)
    [result] = pipe("def add", max_new_tokens=6)
    tokenizer = gpt.GPT2Tokenizer.from_pretrained(checkpoint)
    ids = np.asarray([tokenizer.encode("def add")])
    tokens = gpt.generate(pf.from_pretrained(checkpoint), ids, max_new_tokens=6)
    continuation = tokenizer.decode(tokens[0, ids.shape[1] :], skip_special_tokens=True)
    assert result == {"generated_text": "def add" + continuation}
    batch = pipe(["def add", "import os"], max_new_tokens=3)
    assert [
        r[0]["generated_text"][: len(p)]
        for r, p in zip(batch, ["def add", "import os"], strict=True)
    ] == [
        "def add",
        "import os",
    ]


def test_pipeline_rejects_unknown_tasks_and_empty_prompts(checkpoint):
    with pytest.raises(ValueError, match="unknown task 'summarization'.*text-generation"):
        pf.pipeline("summarization", checkpoint)
    with pytest.raises(ValueError, match="non-empty prompt"):
        pf.pipeline("text-generation", checkpoint)("", max_new_tokens=2)


def test_cli_generate_prints_each_completion(checkpoint, capsys):
    assert (
        cli.main(["generate", str(checkpoint), "def add", "import os", "--max-new-tokens", "3"])
        == 0
    )
    lines = capsys.readouterr().out
    assert "def add" in lines and "import os" in lines


def test_cli_reports_a_missing_checkpoint_without_a_traceback(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "nowhere"), "hello"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_a_checkpoint_of_another_family_says_which_family_the_task_needs(tmp_path):
    pf.save_pretrained(clip.CLIPModel(clip.CLIPConfig.tiny(), rngs=nnx.Rngs(0)), tmp_path)
    with pytest.raises(ValueError, match="is a clip checkpoint; text-generation needs gpt2"):
        pf.pipeline("text-generation", tmp_path)


def test_every_familys_tasks_are_pipeline_tasks():
    for model_type, family in FAMILIES.items():
        for task, cls in family.pipelines.items():
            assert pf.pipelines.TASKS[task] == model_type and callable(cls.from_model)


def test_pipelines_and_the_cli_take_a_hub_id_from_the_hugging_face_cache(
    checkpoint, hub_cache, capsys
):
    hub_cache.add("org/tiny-gpt2", checkpoint)
    want = pf.pipeline("text-generation", checkpoint)("def add", max_new_tokens=3)
    assert pf.pipeline("text-generation", "org/tiny-gpt2")("def add", max_new_tokens=3) == want
    assert cli.main(["generate", "org/tiny-gpt2", "def add", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == want[0]["generated_text"] + "\n"
    assert cli.main(["generate", "org/missing", "hello"]) == 2
    assert "'org/missing'" in capsys.readouterr().err
