"""The default recipe on a tiny budget: prepares a corpus (here a throwaway one in place of
Shakespeare), trains, and leaves a Hugging Face Llama folder that nexttoken loads and samples from."""

import json

import pytest
import torch
from train_tiny import one_thread, tiny_texts  # noqa: F401 (one_thread: a fixture)

from nexttoken.decoding.config import GenerationConfig
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import load
from nexttoken.train.checkpoint import latest_checkpoint, load_checkpoint
from nexttoken.train.metrics import read_metrics
from nexttoken.train.prepare import read_index
from nexttoken.train.run import Recipe, recipe_with, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_recipe_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr("nexttoken.train.run.load_corpus", lambda name: tiny_texts())
    recipe = recipe_with(vocab_size=320, d_model=32, n_layer=2, n_head=4, d_ff=64, seq_len=32, max_steps=6,
                         global_batch=4, micro_batch=2, warmup_steps=1, eval_every=3, checkpoint_every=3,
                         val_fraction=0.25, progress=False)
    result = run_recipe(recipe, tmp_path)
    index = read_index(tmp_path / "data")
    assert index.vocab_size == 320 and index.splits["val"].n_documents == 3
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert {"eval_loss", "perplexity", "bits_per_byte"} <= records[-1].keys()
    assert result.train.eval["bits_per_byte"] == records[-1]["bits_per_byte"]
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "sample.txt").read_text().startswith("ROMEO:")
    # the run folder is a Hugging Face Llama folder holding the final weights
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    lm = load(tmp_path, dtype="float32")  # the saved weights as they are
    final = load_checkpoint(latest_checkpoint(tmp_path)).model
    for name, tensor in lm.model.state_dict().items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=0)
    completion = lm.generate(lm.encode("ROMEO:"), GenerationConfig(max_new_tokens=5))
    assert len(completion.token_ids) >= 1


def test_recipe_settings_by_name():
    recipe = recipe_with(d_model=64, max_steps=7, lr=None)
    assert recipe.d_model == 64 and recipe.train.max_steps == 7 and recipe.train.lr == Recipe().train.lr
    with pytest.raises(NextTokenError, match="unknown recipe settings: colour"):
        recipe_with(colour="red")


def test_a_data_folder_must_be_prepared(tmp_path):
    with pytest.raises(NextTokenError, match=r"no index.json \(prepare the data first: nexttoken prepare-data\)"):
        run_recipe(recipe_with(data=tmp_path / "typo", progress=False), tmp_path / "run")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "run" / "data").exists()


@pytest.mark.parametrize("settings, message", [
    ({"seq_len": 0}, "sizes must be positive, got seq_len 0"),
    ({"n_layer": 0, "d_ff": -1}, "sizes must be positive, got n_layer 0, d_ff -1"),
    ({"d_model": 30}, r"d_model \(30\) must be a multiple of n_head \(4\)"),
    ({"d_model": 36}, r"no such model: head_dim \(9\) must be even for rotary embeddings"),
    ({"strategy": "xyz"}, "unknown distributed strategy 'xyz' \\(choose from ddp, fsdp\\)"),
])
def test_impossible_recipes_are_refused(settings, message):
    with pytest.raises(NextTokenError, match=message):
        recipe_with(**settings)


def test_a_batch_that_does_not_split_fails_before_the_data_is_prepared(tmp_path, monkeypatch):
    monkeypatch.setattr("nexttoken.train.run.load_corpus", lambda name: pytest.fail("the corpus was read"))
    with pytest.raises(NextTokenError, match="global batch 3 is not a multiple of micro-batch 2 x 1 processes"):
        run_recipe(recipe_with(global_batch=3, micro_batch=2, progress=False), tmp_path)
    assert not (tmp_path / "data").exists()
