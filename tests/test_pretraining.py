"""`train --objective mlm|span`, tiny: masking and span-corruption statistics against their definitions
and against transformers' collator, run folders that transformers reads with our scores, exact resume
after a kill, and the settings refused before any work."""

import random
from dataclasses import replace

import pytest
import torch
from train_tiny import tiny_texts

from nexttoken.errors import NextTokenError
from nexttoken.train.loop import TrainConfig
from nexttoken.train.masking import MaskingConfig, mask_tokens, maskable_positions
from nexttoken.train.metrics import read_metrics
from nexttoken.train.mlm import MaskedBatches, MaskedLMRecipe, run_masked_lm
from nexttoken.train.noising import sentinel_id, span_corruption
from nexttoken.train.objectives import IGNORE
from nexttoken.train.span import SpanRecipe, expected_lengths, run_span

TINY = dict(vocab_size=300, d_model=32, n_layer=1, n_head=2, d_ff=64, seq_len=32, eval_batches=2, workers=1)


def tiny_train(steps: int = 4) -> TrainConfig:
    return TrainConfig(max_steps=steps, global_batch=4, micro_batch=4, lr=3e-3, min_lr=3e-4, warmup_steps=1,
                       precision="fp32", fused=False, eval_every=2, checkpoint_every=2, progress=False)


@pytest.fixture
def tiny_corpus(monkeypatch):
    for module in ("mlm", "span"):
        monkeypatch.setattr(f"nexttoken.train.{module}.load_corpus", lambda name: tiny_texts())


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("nexttoken.train.mlm.load_corpus", lambda name: tiny_texts())
        run_dir = tmp_path_factory.mktemp("mlm")
        run_masked_lm(MaskedLMRecipe(**TINY, train=tiny_train()), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def span_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("nexttoken.train.span.load_corpus", lambda name: tiny_texts())
        run_dir = tmp_path_factory.mktemp("span")
        run_span(SpanRecipe(**TINY, n_sentinels=8, train=tiny_train()), run_dir)
    return run_dir


def test_masking_matches_the_definition_and_transformers_collator(minilm):
    """BERT's rule on MiniLM's tokens: ours and DataCollatorForLanguageModeling, each with its own seeded
    generator, choose 15 % of ordinary tokens and split them 80/10/10, never touching [CLS], [SEP] or padding."""
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    rng, tokenizer = random.Random(0), minilm.tokenizer
    rows = [[tokenizer.bos_id, *(rng.randrange(1000, 30000) for _ in range(120)), tokenizer.eos_id] for _ in range(64)]
    ids = torch.tensor(rows)  # (64, 122): no padding
    maskable = maskable_positions(ids, minilm.tokenizer)
    ours_inputs, ours_labels = mask_tokens(ids, maskable, minilm.tokenizer.mask_id, minilm.tokenizer.vocab_size,
                                           torch.Generator().manual_seed(0), MaskingConfig())
    collator = DataCollatorForLanguageModeling(AutoTokenizer.from_pretrained(minilm.path), mlm_probability=0.15,
                                               seed=0, return_tensors="pt")
    theirs = collator([{"input_ids": row} for row in rows])

    def shares(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float, float]:
        chosen = labels != IGNORE
        n = int(chosen.sum())
        masked = int((inputs[chosen] == minilm.tokenizer.mask_id).sum()) / n
        kept = int((inputs[chosen] == ids[chosen]).sum()) / n
        assert not chosen[~maskable].any() and torch.equal(labels[chosen], ids[chosen])
        assert torch.equal(inputs[~chosen], ids[~chosen])
        return n / int(maskable.sum()), masked, 1 - masked - kept, kept

    ours, reference = shares(ours_inputs, ours_labels), shares(theirs["input_ids"], theirs["labels"])
    assert ours == pytest.approx((0.15, 0.8, 0.1, 0.1), abs=0.02)
    assert ours == pytest.approx(reference, abs=0.03)


@pytest.mark.parametrize("length, density, mean_span", [(128, 0.15, 3.0), (512, 0.15, 3.0), (100, 0.3, 5.0)])
def test_span_corruption_statistics_and_sentinel_order(length, density, mean_span):
    """T5's definition: round(L * density) noise tokens in round(that / mean) spans, sentinels
    <extra_id_0>, <extra_id_1>, ... in order of appearance (counted down from the top of the
    vocabulary), the same ones in inputs and targets; every row of one length the same shape."""
    vocab = 1000
    recipe = SpanRecipe(seq_len=length, noise_density=density, mean_span_length=mean_span)
    shapes, span_lengths = set(), []
    for seed in range(50):
        tokens = [random.Random(seed).randrange(3, 800) for _ in range(length)]
        example = span_corruption(tokens, vocab, random.Random(seed), density, mean_span, eos_id=1)
        shapes.add((len(example.inputs), len(example.targets)))
        sentinels_in = [t for t in example.inputs if t >= 800]
        n_spans = len(sentinels_in)
        assert sentinels_in == [sentinel_id(k, vocab) for k in range(n_spans)] == [vocab - 1 - k for k in range(n_spans)]
        assert [t for t in example.targets if t >= 800] == sentinels_in
        starts = [i for i, t in enumerate(example.targets) if t >= 800] + [len(example.targets) - 1]
        span_lengths += [b - a - 1 for a, b in zip(starts, starts[1:])]
        assert sum(span_lengths[-n_spans:]) == round(length * density)
        assert n_spans == round(round(length * density) / mean_span)
    assert shapes == {expected_lengths(recipe)}
    assert sum(span_lengths) / len(span_lengths) == pytest.approx(round(length * density) / round(round(length * density) / mean_span))


def test_masked_batches_resume_where_they_stopped(mlm_run):
    from nexttoken.tokenizer import Tokenizer

    recipe = MaskedLMRecipe(**TINY)
    tokenizer = Tokenizer.from_hf_folder(mlm_run / "data")
    first = MaskedBatches(mlm_run / "data", "train", 4, recipe, tokenizer)
    batches = [next(first) for _ in range(5)]
    again = MaskedBatches(mlm_run / "data", "train", 4, recipe, tokenizer)
    for _ in range(2):
        next(again)
    resumed = MaskedBatches(mlm_run / "data", "train", 4, recipe, tokenizer)
    resumed.load_state_dict(again.state_dict())
    for expected in batches[2:]:
        batch = next(resumed)
        assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert batches[0]["input_ids"].shape == (4, 32)
    assert (batches[0]["input_ids"][:, 0] == tokenizer.bos_id).all() and (batches[0]["labels"] != IGNORE).any()


def test_mlm_run_folder_is_a_bert_for_masked_lm_that_transformers_scores_alike(mlm_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from nexttoken.encoder.sentence import load_encoder

    encoder = load_encoder(mlm_run)
    text = "Sweet lord, the [MASK] doth speak."
    ids = AutoTokenizer.from_pretrained(mlm_run)(text)["input_ids"]
    assert ids == encoder.encode(text)
    reference = AutoModelForMaskedLM.from_pretrained(mlm_run, dtype="float32").eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor([ids])).logits[0]
        ours = encoder.mlm(encoder.model.hidden_states(torch.tensor([ids])), encoder.model.embed.weight)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    candidates = encoder.fill(text, 3)[0]
    position = ids.index(encoder.tokenizer.mask_id)
    assert [c.token_id for c in candidates] == theirs[position].topk(3).indices.tolist()
    records = read_metrics(mlm_run)
    assert "eval_masked_accuracy" in records[-1] and records[-1]["step"] == 4


def test_span_run_folder_is_a_t5_that_transformers_scores_alike(span_run):
    from transformers import AutoModelForSeq2SeqLM

    from nexttoken.apps.seq2seq import Seq2SeqModel

    ours = Seq2SeqModel.load(span_run)
    source = ours.encode("Sweet lord, the <extra_id_0> doth speak.")
    vocab = ours.tokenizer.get_vocab_size()
    assert ours.tokenizer.token_to_id("<extra_id_0>") == sentinel_id(0, vocab) and source[-1] == 1
    assert sentinel_id(0, vocab) in source
    targets = torch.tensor([[0, sentinel_id(0, vocab), 5, 6]])
    reference = AutoModelForSeq2SeqLM.from_pretrained(span_run, dtype="float32").eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor([source]), decoder_input_ids=targets).logits
        mine = ours.model(torch.tensor([source]), targets)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    assert isinstance(ours.generate("Sweet lord, the <extra_id_0> doth speak.").text, str)


def test_typed_sentinels_read_as_training_corrupts(span_run):
    """A sentinel typed between words takes the space before it, and the word after it keeps its own
    "▁": the input is the text's tokens with the span's replaced by the sentinel, as in training, and
    transformers' tokenizer of the folder reads it alike."""
    from transformers import AutoTokenizer

    from nexttoken.apps.seq2seq import Seq2SeqModel

    tokenizer = Seq2SeqModel.load(span_run).tokenizer
    whole = tokenizer.encode("Sweet lord, the fair queen doth speak.").ids
    masked = tokenizer.encode("Sweet lord, the <extra_id_0> doth speak.").ids
    span = tokenizer.encode("Sweet lord, the").ids[:-1]  # without </s>
    rest = whole[len(tokenizer.encode("Sweet lord, the fair queen").ids) - 1:]
    assert masked == [*span, tokenizer.token_to_id("<extra_id_0>"), *rest]
    assert tokenizer.encode("sweet <extra_id_0>.").ids[-2] == tokenizer.token_to_id(".")
    assert AutoTokenizer.from_pretrained(span_run)("Sweet lord, the <extra_id_0> doth speak.")["input_ids"] == masked


def test_a_fill_ends_at_the_sentinel_after_the_texts_last(span_run):
    """A fill that writes the sentinel the text does not hold has filled every span: it ends there.
    Texts holding different sentinels decode in one call as each does alone, in order."""
    from nexttoken.apps.seq2seq import Seq2SeqModel
    from nexttoken.decoding.config import GenerationConfig

    ours = Seq2SeqModel.load(span_run)
    sentinel = ours.tokenizer.token_to_id
    texts = ["Sweet lord, the <extra_id_0> doth speak.", "The <extra_id_0> lord, <extra_id_1> speak.", "Sweet lord."]
    assert [ours.end_ids(text) for text in texts] == [(1, sentinel("<extra_id_1>")), (1, sentinel("<extra_id_2>")), (1,)]
    config = GenerationConfig(max_new_tokens=6)
    together = ours.generate_batch(texts, config)
    assert [c[0].token_ids for c in together] == [ours.generate(text, config).token_ids for text in texts]


@pytest.mark.parametrize("objective", ["mlm", "span"])
def test_a_killed_run_resumes_to_the_same_losses(objective, tiny_corpus, tmp_path, monkeypatch):
    """Killed right after its first checkpoint (step 2), the run resumes and logs the same losses as
    one never stopped; a new run in its folder is refused."""
    module = "mlm" if objective == "mlm" else "span"
    runner = run_masked_lm if objective == "mlm" else run_span
    recipe = (MaskedLMRecipe(**TINY, train=tiny_train()) if objective == "mlm"
              else SpanRecipe(**TINY, n_sentinels=8, train=tiny_train()))
    runner(recipe, tmp_path / "whole")
    exporter = "export_masked_lm" if objective == "mlm" else "export_t5"
    real = getattr(__import__(f"nexttoken.train.{module}", fromlist=[exporter]), exporter)

    def killed(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(f"nexttoken.train.{module}.{exporter}", killed)
    with pytest.raises(KeyboardInterrupt):
        runner(recipe, tmp_path / "killed")
    monkeypatch.setattr(f"nexttoken.train.{module}.{exporter}", real)
    with pytest.raises(NextTokenError, match="already holds a run"):
        runner(recipe, tmp_path / "killed")
    runner(recipe, tmp_path / "killed", resume=True)
    losses = [[r["loss"] for r in read_metrics(tmp_path / name)] for name in ("whole", "killed")]
    assert losses[0] == losses[1] and len(losses[0]) == 4


@pytest.mark.parametrize("args, message", [
    (["--objective", "mlm", "--corpus", "klingon"], "unknown corpus 'klingon'"),
    (["--objective", "span", "--corpus", "klingon"], "unknown corpus 'klingon'"),
    (["--objective", "bert"], "unknown objective 'bert'"),
    (["--objective", "span", "--from", "somewhere"], "--from continues an encoder"),
    (["--objective", "mlm", "--d-model", "30", "--n-head", "4"], "d_model a multiple of n_head"),
])
def test_impossible_pretraining_settings_are_refused(args, message, tmp_path):
    from typer.testing import CliRunner

    from nexttoken import cli

    with pytest.raises(NextTokenError, match=message):
        CliRunner().invoke(cli.app, ["train", *args, "--run-dir", str(tmp_path / "run")], catch_exceptions=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, steps, lr", [([], 800, 1e-3), (["--from", "minilm"], 300, 3e-4),
                                             (["--from", "minilm", "--steps", "50", "--lr", "1e-5"], 50, 1e-5)])
def test_continuing_an_encoder_takes_fewer_steps_at_a_lower_rate_by_default(args, steps, lr, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from nexttoken import cli

    ran, threads = [], []
    monkeypatch.setattr("nexttoken.train.mlm.run_masked_lm", lambda recipe, *_, **__: ran.append(recipe) or 1 / 0)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    CliRunner().invoke(cli.app, ["train", "--objective", "mlm", *args, "--threads", "1", "--run-dir", str(tmp_path / "run")])
    assert (ran[0].train.max_steps, ran[0].train.lr) == (steps, lr) and threads == [1]


def test_from_must_name_an_encoder(tmp_path, monkeypatch):
    """A decoder's folder (a Llama export) is refused before the corpus is read."""
    monkeypatch.setattr("nexttoken.train.mlm.load_corpus", lambda name: pytest.fail("the corpus was read"))
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(NextTokenError, match="not an encoder in BERT's layout"):
        run_masked_lm(replace(MaskedLMRecipe(**TINY), source=folder), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_mlm_continues_an_encoder_with_a_new_head_tied_to_its_embeddings(minilm, tiny_corpus, tmp_path):
    """--from a BERT folder without a masked-LM head (a tiny random BertModel with MiniLM's tokenizer):
    the run keeps its tokenizer, ties a new head to its embeddings and exports what transformers scores alike."""
    import shutil

    from transformers import AutoModelForMaskedLM, BertConfig, BertModel

    from nexttoken.encoder.sentence import load_encoder

    source = tmp_path / "source"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)).save_pretrained(source)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm.path / name, source / name)
    recipe = MaskedLMRecipe(source=source, seq_len=32, eval_batches=2, workers=1, train=tiny_train(2))
    run_masked_lm(recipe, tmp_path / "run")
    encoder = load_encoder(tmp_path / "run")
    ids = encoder.encode("the king doth [MASK] of love")
    assert ids == minilm.encode("the king doth [MASK] of love")
    reference = AutoModelForMaskedLM.from_pretrained(tmp_path / "run", dtype="float32").eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor([ids])).logits[0]
    ours = encoder.mlm(encoder.model.hidden_states(torch.tensor([ids])), encoder.model.embed.weight)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
