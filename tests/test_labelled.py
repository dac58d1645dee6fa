"""`finetune sentiment|ner`, tiny: People's Daily tags to character BIO tags on hand-made lines, the
fixed splits, a short fine-tune of MiniLM that lowers the loss, resumes exactly after a kill and
saves a folder that transformers and `classify` read, and the bad inputs refused before any work."""

import pytest
import torch

from nexttoken.encoder.classifier import load_classifier
from nexttoken.encoder.sentence import right_pad
from nexttoken.errors import NextTokenError
from nexttoken.train.labelled_data import (character_tags, check_classes, fixed_splits, read_labelled_file,
                                           sentence_pieces, tagged_words)
from nexttoken.train.labelled_tasks import LabelledTask, run_labelled_finetune
from nexttoken.train.metrics import read_metrics

LINES = {
    "positive": ["what a lovely day", "I adore this car", "great ride, so smooth", "best trip ever",
                 "wonderful and safe", "I love it", "superb service", "happy with the drive"],
    "negative": ["what a terrible day", "I hate this car", "awful ride, so rough", "worst trip ever",
                 "dangerous and unsafe", "I loathe it", "dreadful service", "angry about the drive"],
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm):
    """A tiny random BERT with MiniLM's tokenizer, saved by transformers: fast to fine-tune."""
    import shutil

    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm.path / name, folder / name)
    return folder


@pytest.fixture
def sentiment_file(tmp_path):
    path = tmp_path / "tweets.tsv"
    rows = [f"{label}\t{text}" for i in range(8) for label, texts in LINES.items() for text in texts[i:i + 1]]
    path.write_text("\n".join(rows * 2) + "\n", encoding="utf-8")
    return path


def tiny_task(data_file, **settings) -> LabelledTask:
    defaults = dict(lang="en", train_examples=16, validation_examples=8, test_examples=8, batch_size=4, lr=3e-3, epochs=1,
                    warmup_steps=0, evaluations=2, max_tokens=16, data_file=data_file)
    return LabelledTask("sentiment", **(defaults | settings))


def test_people_daily_tags_become_character_bio_tags():
    line = "１９９８年/t  ，/w  中共中央/nt  总书记/n  江/nr  泽民/nr  在/p  北京/ns  会见/v  [香港/ns  特别/a  行政区/n]ns  李/nr  鹏/nr  。/w"
    assert tagged_words("[中央/n  电视台/n]nt") == [("中央", "n"), ("电视台", "n")]
    chars, tags = character_tags(line)
    assert "".join(chars) == "１９９８年，中共中央总书记江泽民在北京会见香港特别行政区李鹏。"
    tagged = dict(zip(range(len(chars)), tags))
    assert [tagged[i] for i in range(6)] == ["O"] * 6
    assert tags[6:10] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG"]
    assert tags[13:16] == ["B-PER", "I-PER", "I-PER"]  # surname and given name: one person
    assert tags[16:19] == ["O", "B-LOC", "I-LOC"]
    assert tags[21:23] == ["B-LOC", "I-LOC"] and tags[23:28] == ["O"] * 5  # a compound's words keep their tags
    assert tags[28:30] == ["B-PER", "I-PER"] and tags[-1] == "O"
    two_people = character_tags("江/nr  泽民/nr  、/w  李/nr  鹏/nr")[1]
    assert two_people == ["B-PER", "I-PER", "I-PER", "O", "B-PER", "I-PER"]
    with pytest.raises(NextTokenError, match="not a tagged People's Daily word"):
        tagged_words("中共中央 nt")


def test_long_lines_are_cut_at_sentence_ends():
    chars, tags = list("甲乙。丙丁戊。己"), ["O"] * 8
    assert [("".join(c)) for c, _ in sentence_pieces(chars, tags, 6)] == ["甲乙。", "丙丁戊。己"]


def test_splits_are_fixed_and_disjoint():
    rows = list(range(100))
    first, again = fixed_splits(rows, 50, 10, 20, "rows"), fixed_splits(rows, 0, 10, 20, "rows")
    assert first.test == again.test and first.validation == again.validation
    assert first.train == again.train[:50] and len(again.train) == 70
    assert not set(first.train) & set(first.validation) | set(first.train) & set(first.test)
    with pytest.raises(NextTokenError, match="too few for 90 to train on"):
        fixed_splits(rows, 90, 10, 20, "rows")
    with pytest.raises(NextTokenError, match="at least one example each"):
        fixed_splits(rows, 10, 0, 20, "rows")
    with pytest.raises(NextTokenError, match="one class only"):
        check_classes([("a", 1), ("b", 1)], ["negative", "positive"], "here")


def test_a_short_fine_tune_lowers_the_loss_and_saves_a_classifier(sentiment_file, tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    task = tiny_task(sentiment_file, epochs=3)
    result = run_labelled_finetune(task, tmp_path / "run", tiny_bert, out=tmp_path / "out", progress=False)
    records = read_metrics(tmp_path / "run")
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert set(result.test) >= {"accuracy", "examples", "examples_per_second"} and "eval_accuracy" in records[-1]
    classifier = load_classifier(tmp_path / "out")
    assert classifier.labels == ["negative", "neutral", "positive"]
    ids, mask = right_pad([classifier.encoder.encode("I love this car"), classifier.encoder.encode("awful")], 0)
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", dtype="float32").eval()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask.long()).logits
    torch.testing.assert_close(classifier.model(ids, mask=mask), theirs, atol=1e-4, rtol=1e-4)
    with pytest.raises(NextTokenError, match="holds a finished run"):
        run_labelled_finetune(task, tmp_path / "run", tiny_bert, progress=False)
    with pytest.raises(NextTokenError, match="already exists and is not empty"):
        run_labelled_finetune(task, tmp_path / "other", tiny_bert, out=tmp_path / "out", progress=False)


def test_a_killed_fine_tune_resumes_exactly(sentiment_file, tiny_bert, tmp_path, monkeypatch):
    task = tiny_task(sentiment_file)
    run_labelled_finetune(task, tmp_path / "whole", tiny_bert, progress=False)
    import nexttoken.train.labelled_tasks as tasks

    real_train = tasks.train

    def killed_after_first_checkpoint(*args, **kwargs):
        def stop(weights):
            raise KeyboardInterrupt

        return real_train(*args, **kwargs, on_checkpoint=stop)

    monkeypatch.setattr(tasks, "train", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_labelled_finetune(task, tmp_path / "killed", tiny_bert, progress=False)
    monkeypatch.setattr(tasks, "train", real_train)
    run_labelled_finetune(task, tmp_path / "killed", tiny_bert, resume=True, progress=False)
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "killed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole] and len(whole) == 4


def test_token_classification_on_people_daily_lines(monkeypatch, tiny_bert, tmp_path):
    """NER with hand-made lines: characters tagged on their first piece, entity F1 reported."""
    lines = ["江/nr  泽民/nr  在/p  北京/ns  会见/v  新华社/nt  记者/n  。/w",
             "李/nr  鹏/nr  到/v  上海/ns  。/w", "我们/r  去/v  广州/ns  看/v  人民/n  日报/n  。/w"] * 8
    rows = [(chars, [["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"].index(t) for t in tags])
            for chars, tags in map(character_tags, lines)]
    monkeypatch.setattr("nexttoken.train.labelled_tasks.people_daily_entities", lambda max_chars: rows)
    task = LabelledTask("ner", "zh", train_examples=8, validation_examples=4, test_examples=4, batch_size=4,
                        evaluations=1, lr=1e-4)
    result = run_labelled_finetune(task, tmp_path / "run", tiny_bert, out=tmp_path / "out", progress=False)
    assert set(result.test) >= {"f1", "precision", "recall"} and 0 <= result.test["f1"] <= 1
    tagger = load_classifier(tmp_path / "out")
    assert tagger.per_token and tagger.labels[3] == "B-PER"
    assert [char for char, _ in tagger.tag("江泽民在北京")] == list("江泽民在北京")  # one character a word


def test_labelled_files_are_checked(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("positive\tlovely\nneutral\tfine\nsarcastic\toh great\n", encoding="utf-8")
    with pytest.raises(NextTokenError, match=r"data.tsv:3: unknown label 'sarcastic' \(the head knows negative, neutral, positive\)"):
        read_labelled_file(path, ["negative", "neutral", "positive"])


@pytest.mark.parametrize("args, message", [
    (["sentiment", "--lang", "fr"], "sentiment has no corpus in language 'fr'"),
    (["ner", "--epochs", "0"], "epochs, batch size and evaluations must be positive"),
    (["sentiment", "--lang", "zh", "--lr", "0"], "the learning rate and the embedding learning-rate scale must be positive"),
    (["ner", "--lang", "en"], "ner has no corpus in language .en."),
    (["sentiment", "--examples", "40000"], "too few for 40000 to train on"),
])
def test_bad_settings_are_refused_before_any_work(args, message, tmp_path):
    from typer.testing import CliRunner

    from nexttoken import cli

    with pytest.raises(NextTokenError, match=message):
        CliRunner().invoke(cli.app, ["finetune", *args, "--run-dir", str(tmp_path / "run")], catch_exceptions=False)
    assert not (tmp_path / "run").exists()


def test_unset_settings_are_the_recipe_s():
    from nexttoken.train.labelled_tasks import RECIPES

    recipe, task = RECIPES["sentiment", "zh"], LabelledTask("sentiment", "zh", epochs=1)
    assert (task.train_examples, task.lr, task.embedding_lr_scale, task.epochs) == (
        recipe.train_examples, recipe.lr, recipe.embedding_lr_scale, 1)


def test_one_class_data_is_refused(tmp_path):
    path = tmp_path / "one.tsv"
    path.write_text("".join(f"positive\tgood {i}\n" for i in range(40)), encoding="utf-8")
    with pytest.raises(NextTokenError, match="one class only"):
        run_labelled_finetune(tiny_task(path), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_length_grouped_batches_cover_an_epoch_and_resume():
    from nexttoken.train.finetune import ExampleLoader

    lengths = [(i * 37) % 101 for i in range(400)]
    loader = ExampleLoader(list(range(400)), 4, list, seed=3, lengths=lengths)
    loader.GROUP = 5
    epoch = [next(loader) for _ in range(100)]
    assert sorted(i for batch in epoch for i in batch) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch) / 100
    assert spread < 20  # shuffled batches of 4 of these lengths spread about 50
    resumed = ExampleLoader(list(range(400)), 4, list, seed=3, lengths=lengths)
    resumed.GROUP = 5
    resumed.load_state_dict({"taken": 60})
    assert [next(resumed) for _ in range(40)] == epoch[60:]


def test_an_extended_vocabulary_reads_new_characters_alike_in_transformers(tiny_bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from nexttoken.encoder.sentence import load_encoder
    from nexttoken.train.vocabulary import extend_vocabulary, unknown_characters

    source = load_encoder(tiny_bert)
    texts = ["江泽民在北京会见记者。", "江泽民到上海。", "鑫鑫"]
    new = unknown_characters(source.tokenizer, texts)
    assert new == ["泽", "鑫"]  # seen twice, unknown to MiniLM's vocabulary; 江, 民, 上, 海, 。 are in it
    folder = extend_vocabulary(tiny_bert, new, tmp_path / "extended")
    encoder = load_encoder(folder)
    ids = encoder.encode("江泽民鑫")
    assert encoder.tokenizer.unk_id not in ids and max(ids) >= source.tokenizer.vocab_size
    assert AutoTokenizer.from_pretrained(folder)("江泽民鑫")["input_ids"] == ids
    reference = AutoModel.from_pretrained(folder, dtype="float32").eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor([ids])).last_hidden_state
    torch.testing.assert_close(encoder.model.hidden_states(torch.tensor([ids])), theirs, atol=1e-4, rtol=1e-4)


def test_new_embedding_rows_are_seeded_distinct_and_keep_the_old_ones(tiny_bert, tmp_path):
    import safetensors.torch

    from nexttoken.train.vocabulary import extend_vocabulary, new_embedding_rows

    table = torch.randn(500, 8, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.5, 2.0, 8) + 3.0
    rows = new_embedding_rows(table, 4000, seed=7)
    torch.testing.assert_close(rows, new_embedding_rows(table, 4000, seed=7))
    assert not torch.equal(rows, new_embedding_rows(table, 4000, seed=8))
    torch.testing.assert_close(rows.mean(0), table.mean(0), atol=0.1, rtol=0)  # the old rows' distribution
    torch.testing.assert_close(rows.std(0), table.std(0), atol=0.1, rtol=0.1)
    assert torch.cdist(rows[:50], rows[:50]).add(torch.eye(50) * 1e3).min() > 0.1  # no two rows alike
    name = "embeddings.word_embeddings.weight"
    old = safetensors.torch.load_file(tiny_bert / "model.safetensors")[name]
    first = extend_vocabulary(tiny_bert, ["泽", "鑫"], tmp_path / "a", seed=3)
    again = extend_vocabulary(tiny_bert, ["泽", "鑫"], tmp_path / "b", seed=3)
    extended = safetensors.torch.load_file(first / "model.safetensors")[name]
    assert torch.equal(extended[: len(old)], old) and extended.shape == (len(old) + 2, old.shape[1])
    assert torch.equal(extended, safetensors.torch.load_file(again / "model.safetensors")[name])
    assert not torch.equal(extended[-1], extended[-2])


def test_the_embedding_table_gets_its_own_learning_rate(tiny_bert):
    from nexttoken.encoder.sentence import load_encoder
    from nexttoken.train.finetune import classifier_for
    from nexttoken.train.loop import TrainConfig, make_optimizer

    model = classifier_for(load_encoder(tiny_bert), 3, per_token=False)
    plain = make_optimizer(model, TrainConfig(fused=False))
    assert all("lr_scale" not in group for group in plain.param_groups)
    scaled = make_optimizer(model, TrainConfig(embedding_lr_scale=10.0, fused=False)).param_groups
    fast = [group for group in scaled if "lr_scale" in group]
    assert len(fast) == 1 and fast[0]["lr_scale"] == 10.0 and fast[0]["params"] == [model.encoder.embed.weight]
    assert sum(len(group["params"]) for group in scaled) == len(list(model.parameters()))
    with pytest.raises(NextTokenError, match="embedding learning-rate scale must be positive"):
        TrainConfig(embedding_lr_scale=0.0)
