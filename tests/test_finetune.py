"""Fine-tuning recipes, tiny: a few steps must lower the loss, the batches must count the right
tokens, and LoRA must come out merged. The decoder is a tiny random Llama with SmolLM2's real
tokenizer and chat template; the encoder is the real MiniLM with new heads."""

import pytest
import torch
from train_tiny import Repeat

from nexttoken.config import ModelConfig
from nexttoken.encoder.classifier import load_classifier, save_classifier
from nexttoken.encoder.sentence import load_encoder, right_pad
from nexttoken.errors import NextTokenError
from nexttoken.model.heads import MaskedLMHead
from nexttoken.model.transformer import Transformer
from nexttoken.pretrained import LanguageModel
from nexttoken.tokenizer.training import shakespeare_files
from nexttoken.train.finetune import (ExampleLoader, classifier_for, finetune_chat, finetune_classifier, sft_examples,
                                      tagged_batch, word_labels)
from nexttoken.train.lora import LoraConfig, LoRALinear
from nexttoken.train.loop import TrainConfig, train
from nexttoken.train.masking import MaskedLM, labelled_token_loss, mask_tokens, maskable_positions, sft_batch
from nexttoken.train.objectives import IGNORE
from nexttoken.train.sft_data import person_tags, play_lines, read_plays, sft_conversations


def tiny_config(steps: int, lr: float = 3e-3, batch: int = 2) -> TrainConfig:
    return TrainConfig(max_steps=steps, global_batch=batch, micro_batch=batch, lr=lr, min_lr=lr, warmup_steps=0,
                       precision="fp32", fused=False, progress=False, checkpoint_every=0, eval_every=1000)


@pytest.fixture(scope="module")
def plays():
    files = shakespeare_files()
    return read_plays([f for f in files if f.stem in ("hamlet_gut", "macbeth_gut", "tempest_gut")])


def test_plays_parse_into_speeches(plays):
    hamlet = next(p for p in plays if p.title.startswith("Hamlet"))
    first = hamlet.speeches[0]
    assert (first.speaker, first.lines) == ("Bernardo", ("Who's there?",))  # "Ber." spelled out
    assert {"Hamlet", "Horatio", "Ophelia"} <= hamlet.persons
    macbeth = next(p for p in plays if p.title == "Macbeth")
    assert macbeth.speeches[0].speaker == "First Witch"


def test_sft_set_asks_who_speaks_and_continues_speeches(plays):
    conversations = sft_conversations(plays, 20)
    assert len(conversations) == 20
    who = [c for c in conversations if c[0]["content"].startswith("Who says this line in")]
    assert who and all(c[1]["content"].endswith(".") for c in who)
    speakers = {s.speaker + "." for p in plays for s in p.speeches}
    assert all(c[1]["content"] in speakers for c in who)
    assert any(c[0]["content"].startswith("Continue this speech") for c in conversations)
    assert sft_conversations(plays, 20) == conversations  # seeded


def test_example_loader_resumes_exactly():
    loader = ExampleLoader(list(range(10)), 3, lambda rows: {"x": torch.tensor(rows)}, seed=1)
    seen = [next(loader)["x"].tolist() for _ in range(4)]
    first_epoch = [x for batch in seen[:3] for x in batch]
    assert len(first_epoch) == len(set(first_epoch)) == 9  # no repeats within an epoch
    resumed = ExampleLoader(list(range(10)), 3, lambda rows: {"x": torch.tensor(rows)}, seed=1)
    resumed.load_state_dict({"taken": 2})
    assert [next(resumed)["x"].tolist() for _ in range(2)] == seen[2:]


def tiny_chat_model(smollm2: LanguageModel) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=smollm2.tokenizer.vocab_size, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                         d_ff=128, max_seq_len=256)
    return LanguageModel(Transformer(config).eval().requires_grad_(False), smollm2.tokenizer, smollm2.path)


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4, alpha=8)], ids=["full", "lora"])
def test_sft_lowers_loss_on_assistant_tokens(smollm2, plays, lora, tmp_path):
    lm = tiny_chat_model(smollm2)
    conversations = sft_conversations(plays, 4)
    batch = sft_batch(sft_examples(lm, conversations), lm.pad_id, 96)
    counted = batch["targets"] != IGNORE
    assert 0 < counted.sum() < batch["attention_mask"].sum()  # replies only, not prompts
    result = finetune_chat(lm, conversations, conversations, tiny_config(4, lr=1e-2), tmp_path, max_len=96, lora=lora)
    assert result.eval_after < result.eval_before - 0.5
    assert not any(isinstance(m, LoRALinear) for m in lm.model.modules())  # merged
    assert (tmp_path / "metrics.jsonl").is_file()


def test_word_labels_go_on_first_pieces(minilm):
    words, tags = ["Welcome", ",", "Horatio", ":", "unfoldeth"], [0, 0, 1, 0, 0]
    ids, labels = word_labels(minilm, words, tags)
    tokenizer = minilm.tokenizer
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert ids[1:-1] == tokenizer.encode(" ".join(words), add_bos=False, add_eos=False)
    pieces = [len(tokenizer.encode(w, add_bos=False, add_eos=False)) for w in words]
    assert pieces[-1] > 1  # a word cut into pieces: only its first piece is labelled
    expected = [IGNORE, *(label for t, n in zip(tags, pieces) for label in [t] + [IGNORE] * (n - 1)), IGNORE]
    assert labels == expected
    batch = tagged_batch(minilm, [(ids, labels), (ids[:3] + [ids[-1]], labels[:3] + [IGNORE])])
    assert (batch["labels"][1, 4:] == IGNORE).all() and not batch["attention_mask"][1, 4:].any()


def test_play_classification_learns(plays, tmp_path):
    encoder = load_encoder()
    rows = play_lines(plays, per_play=3)
    _, result = finetune_classifier(encoder, rows, rows[:4], len(plays), tiny_config(3, lr=1e-3, batch=4), tmp_path,
                                    freeze_embeddings=True)
    assert result.eval_after < result.eval_before
    assert result.accuracy_after >= result.accuracy_before


def test_name_tagging_learns(plays, tmp_path):
    encoder = load_encoder()
    rows = person_tags(plays, 8)
    lora = LoraConfig(rank=4, alpha=8, targets=("wqkv", "wo", "w_up", "w_down"))
    model, result = finetune_classifier(encoder, rows, rows[:4], 2, tiny_config(3, lr=3e-3, batch=4), tmp_path,
                                        per_token=True, lora=lora)
    assert result.eval_after < result.eval_before - 0.1
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


@pytest.mark.parametrize("per_token", [False, True], ids=["sequence", "token"])
def test_saved_classifier_gives_transformers_the_same_scores(plays, per_token, tmp_path):
    """A fine-tuned classifier (the token one through LoRA, merged) saved as a BertFor*Classification
    folder: transformers reads it and scores a padded batch as we do; load_classifier reads it back."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    encoder = load_encoder()
    if per_token:
        rows, labels, lora = person_tags(plays, 4), ["O", "PERSON"], LoraConfig(rank=4, alpha=8, targets=("wqkv",))
    else:
        rows, labels, lora = play_lines(plays, per_play=2), [play.title for play in plays], None
    classifier, _ = finetune_classifier(encoder, rows, rows[:2], len(labels), tiny_config(1, batch=2),
                                        tmp_path / "run", per_token=per_token, lora=lora)
    folder = save_classifier(classifier, encoder.path, labels, tmp_path / "saved")
    ids, mask = right_pad([encoder.encode("Thou art a villain, Hamlet."), encoder.encode("Good night.")],
                          encoder.tokenizer.pad_id)
    ours = classifier(ids, mask=mask)
    reference = (AutoModelForTokenClassification if per_token else AutoModelForSequenceClassification)
    theirs = reference.from_pretrained(folder).eval()(input_ids=ids, attention_mask=mask.long()).logits
    counted = mask if per_token else torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(ours[counted], theirs[counted].detach(), atol=1e-4, rtol=1e-4)
    assert theirs.shape[-1] == len(labels) and not torch.equal(ours, torch.zeros_like(ours))

    loaded = load_classifier(folder)
    assert loaded.labels == labels and loaded.per_token == per_token
    assert loaded.encoder.encode("Good night.") == encoder.encode("Good night.")
    torch.testing.assert_close(loaded.model(ids, mask=mask), ours, atol=1e-5, rtol=1e-5)
    if per_token:  # [CLS] thou art a villain , hamlet . [SEP]: a piece per word, each labelled on it
        tagged = loaded.tag("Thou art a villain, Hamlet.")
        assert len(ids[0]) == 9 and [word for word, _ in tagged] == ["Thou", "art", "a", "villain", ",", "Hamlet", "."]
        assert [label for _, label in tagged] == [labels[int(i)] for i in ours[0, 1:8].argmax(dim=-1)]
        with pytest.raises(NextTokenError, match="tags words"):
            loaded.classify(["Good night."])
    else:
        scores = loaded.classify(["Thou art a villain, Hamlet.", "Good night."])
        probabilities = ours.softmax(dim=-1)
        for row, text_scores in zip(probabilities, scores):
            assert list(text_scores)[0] == labels[int(row.argmax())]
            assert [text_scores[label] for label in labels] == pytest.approx(row.tolist(), abs=1e-5)
        with pytest.raises(NextTokenError, match="labels texts"):
            loaded.tag("Good night.")


def test_classifier_folders_are_checked(minilm, tmp_path):
    with pytest.raises(NextTokenError, match="not a saved classifier"):
        load_classifier(minilm.path)
    classifier = classifier_for(load_encoder(), 3, per_token=False)
    with pytest.raises(NextTokenError, match="2 label names for a head of 3"):
        save_classifier(classifier, minilm.path, ["a", "b"], tmp_path)


def test_masked_lm_objective_trains_an_encoder(minilm, tmp_path):
    """The loop trains a tiny encoder with BERT's masking and the masked-LM head."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=minilm.tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
                         max_seq_len=64, causal=False, norm="layer", pre_norm=False, mlp="gelu",
                         positions="learned", bias=True, embed_norm=True)
    model = MaskedLM(Transformer(config), MaskedLMHead(config))
    text = "to be or not to be that is the question whether tis nobler in the mind to suffer"
    ids = torch.tensor([minilm.encode(text)] * 8)
    inputs, labels = mask_tokens(ids, maskable_positions(ids, minilm.tokenizer), minilm.tokenizer.mask_id,
                                 config.vocab_size, torch.Generator().manual_seed(0), )
    batch = {"input_ids": inputs, "labels": labels}
    before, _ = labelled_token_loss(model, batch)
    result = train(model, iter(Repeat(batch)), labelled_token_loss, tiny_config(5, lr=1e-2, batch=8), tmp_path)
    assert result.loss < before.item() - 1.0


@pytest.mark.parametrize("args, message", [
    (["poem"], "unknown fine-tuning task 'poem'"),
    (["chat", "--lora-rank", "-1"], r"the LoRA rank must be 0 \(train every weight\) or more .* got -1 and 32"),
    (["names", "--eval-examples", "0"], "and the held-out examples at least 1, got 8 and 0"),
    (["play", "--plays", "1"], "the play task tells 2 to 32 plays apart, not 1"),
    (["play", "--plays", "33"], "the play task tells 2 to 32 plays apart, not 33"),
])
def test_finetune_command_refuses_impossible_settings(args, message, tmp_path):
    from typer.testing import CliRunner

    from nexttoken import cli

    with pytest.raises(NextTokenError, match=message):
        CliRunner().invoke(cli.app, ["finetune", *args, "--run-dir", str(tmp_path)], catch_exceptions=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("task, args, steps, examples", [("tools", [], 150, 600), ("chat", [], 50, 400),
                                                         ("tools", ["--steps", "3", "--examples", "7"], 3, 7)])
def test_finetune_command_takes_the_task_s_steps_and_examples(monkeypatch, task, args, steps, examples, tmp_path):
    """The tool-use set trains longer than the chat set unless told otherwise."""
    from typer.testing import CliRunner

    from nexttoken import cli
    from nexttoken.train import finetune

    asked = []

    def recipe(lm, *rest):
        if task == "chat":
            rest = rest[1:]  # the plays come first
        config, _, n_examples = rest[:3]
        asked.append((config.max_steps, n_examples))
        raise NextTokenError("stop here")

    monkeypatch.setattr(finetune, "load", lambda *args, **kwargs: None)
    monkeypatch.setattr(finetune, f"{task}_task", recipe)
    result = CliRunner().invoke(cli.app, ["finetune", task, *args, "--run-dir", str(tmp_path)])
    assert "stop here" in str(result.exception)
    assert asked == [(steps, examples)]
