"""`nexttoken finetune sentiment|ner`: an encoder (the built-in MiniLM unless told otherwise) with a
new classification head, trained in full on a shipped labelled corpus (nexttoken.train.labelled_data)
with fixed splits; validation loss and accuracy or entity F1 at each evaluation in metrics.jsonl,
the test set's figures in test.json at the end, and with `out` a BertForSequenceClassification or
BertForTokenClassification folder that `nexttoken classify` and transformers read.

    result = run_labelled_finetune(LabelledTask("sentiment", "en"), "runs/sentiment-en", out="models/sentiment-en")

The batches, the tokenisation and the splits are plain functions, so the reference run through
transformers' Trainer (benchmarks/bench_finetune.py) trains on exactly the same examples."""

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from nexttoken.encoder.classifier import save_classifier
from nexttoken.encoder.metrics import accuracy, entity_scores
from nexttoken.encoder.sentence import SentenceEncoder, load_encoder, right_pad
from nexttoken.errors import NextTokenError
from nexttoken.train.export import write_json
from nexttoken.train.finetune import (ExampleLoader, classifier_for, fixed_batches, native_bfloat16,
                                      sequence_classification_loss, token_classification_loss)
from nexttoken.train.checkpoint import latest_checkpoint
from nexttoken.train.labelled_data import (NER_LABELS, SENTIMENT_LABELS, Splits, check_classes, fixed_splits,
                                           people_daily_entities, read_labelled_file, sentiment_corpus)
from nexttoken.train.loop import TrainConfig, TrainResult, to_device, train
from nexttoken.train.objectives import IGNORE
from nexttoken.train.vocabulary import extend_vocabulary, unknown_characters

Batch = dict[str, torch.Tensor]
Example = tuple[list[int], int | list[int]]  # token ids with one label, or a label (or IGNORE) per token
TEST_FILE = "test.json"
ENCODER_FOLDER = "encoder"  # the encoder with an extended vocabulary, where the task extends it
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Recipe:
    """A task's default size and schedule, sized to finish well within ten minutes on two idle CPU
    cores (docs/training.md has the measurements)."""
    train_examples: int
    epochs: int
    lr: float
    # the word-embedding table's rate, a multiple of lr: a Chinese task's new characters start
    # random and must move far in a few hundred steps
    embedding_lr_scale: float


RECIPES = {("sentiment", "en"): Recipe(4000, 2, 1e-4, 1.0),
           ("sentiment", "zh"): Recipe(6000, 2, 1e-4, 10.0),
           ("ner", "zh"): Recipe(2000, 2, 3e-4, 10.0)}


@dataclass(frozen=True)
class LabelledTask:
    """What to fine-tune on and how; a setting left None is the task's Recipe."""
    task: str  # "sentiment" or "ner"
    lang: str = "en"  # sentiment: "en" (tweets, 3 labels) or "zh" (reviews, 2 labels); ner: "zh" only
    train_examples: int | None = None  # 0: every example outside validation and test
    validation_examples: int = 500
    test_examples: int = 2000
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    embedding_lr_scale: float | None = None  # the word-embedding table's learning rate, a multiple of lr
    warmup_steps: int = 10
    weight_decay: float = 0.01
    max_tokens: int = 128  # [CLS] and [SEP] included; longer texts are cut
    evaluations: int = 4  # validation evaluations over the run, the last at its end
    seed: int = 0
    data_file: Path | None = None  # sentiment: "label<TAB>text" lines in place of the shipped corpus
    # add the characters of the training texts the encoder reads as [UNK] to its vocabulary
    # (nexttoken.train.vocabulary); None: for Chinese
    extend_vocabulary: bool | None = None

    def __post_init__(self) -> None:
        if self.task not in ("sentiment", "ner"):
            raise NextTokenError(f"unknown labelled task '{self.task}' (tasks: sentiment, ner)")
        languages = LANGUAGES if self.task == "sentiment" else ("zh",)
        if self.lang not in languages:
            raise NextTokenError(f"{self.task} has no corpus in language '{self.lang}' (languages: {', '.join(languages)})")
        recipe = RECIPES[self.task, self.lang]
        for name in ("train_examples", "epochs", "lr", "embedding_lr_scale"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(recipe, name))
        if self.extend_vocabulary is None:
            object.__setattr__(self, "extend_vocabulary", self.lang == "zh")
        if self.epochs < 1 or self.batch_size < 1 or self.max_tokens < 3 or self.evaluations < 1:
            raise NextTokenError("epochs, batch size and evaluations must be positive and max tokens at least 3")
        if not (self.lr > 0 and self.embedding_lr_scale > 0):
            raise NextTokenError("the learning rate and the embedding learning-rate scale must be positive")

    @property
    def labels(self) -> tuple[str, ...]:
        return NER_LABELS if self.task == "ner" else SENTIMENT_LABELS[self.lang]

    @property
    def per_token(self) -> bool:
        return self.task == "ner"


@dataclass
class LabelledResult:
    train: TrainResult
    test: dict  # "accuracy" (sentiment) or "f1", "precision", "recall" (ner), and "examples"
    examples_per_second: float  # training examples per second of this invocation


def task_splits(task: LabelledTask) -> Splits:
    """The task's examples, split as nexttoken.train.labelled_data documents; checked for classes."""
    if task.task == "ner":
        rows, what = people_daily_entities(task.max_tokens - 2), "People's Daily"
    elif task.data_file is not None:
        rows, what = read_labelled_file(task.data_file, task.labels), str(task.data_file)
    else:
        rows, what = sentiment_corpus(task.lang), f"the {task.lang} sentiment corpus"
    splits = fixed_splits(rows, task.train_examples, task.validation_examples, task.test_examples, what)
    for name in ("train", "validation", "test"):
        part = getattr(splits, name)
        if task.per_token:
            if not any(any(tags) for _, tags in part):  # tag 0 is "O"
                raise NextTokenError(f"{what}: the {name} split holds no entity: nothing to tag")
        else:
            check_classes(part, task.labels, f"{what}, {name} split")
    return splits


def encode_texts(encoder: SentenceEncoder, rows: list[tuple[str, int]], max_tokens: int) -> list[Example]:
    """[CLS] text [SEP] cut to `max_tokens`, with each text's label."""
    tokenizer = encoder.tokenizer
    encoded = tokenizer.backend.encode_batch([text for text, _ in rows], add_special_tokens=False)
    return [([tokenizer.bos_id, *e.ids[: max_tokens - 2], tokenizer.eos_id], label)
            for e, (_, label) in zip(encoded, rows)]


def encode_characters(encoder: SentenceEncoder, rows: list[tuple[list[str], list[int]]]) -> list[Example]:
    """[CLS] the characters' pieces [SEP], each character's tag on its first piece (IGNORE on later
    pieces, on [CLS] and [SEP], and nowhere for a character with no piece, such as a space)."""
    tokenizer, pieces = encoder.tokenizer, {}
    examples = []
    for chars, tags in rows:
        ids, labels = [tokenizer.bos_id], [IGNORE]
        for char, tag in zip(chars, tags):
            if char not in pieces:
                pieces[char] = tokenizer.encode(char, add_bos=False, add_eos=False)
            ids += pieces[char]
            labels += [tag] + [IGNORE] * (len(pieces[char]) - 1) if pieces[char] else []
        examples.append((ids + [tokenizer.eos_id], labels + [IGNORE]))
    return examples


def encode_examples(encoder: SentenceEncoder, task: LabelledTask, rows: list) -> list[Example]:
    return encode_characters(encoder, rows) if task.per_token else encode_texts(encoder, rows, task.max_tokens)


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-padded "input_ids" (B, T), "attention_mask" (B, T) and "labels": (B,) or (B, T)."""
    ids, mask = right_pad([ids for ids, _ in examples], pad_id)
    if isinstance(examples[0][1], int):
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([label for _, label in examples])}
    labels, _ = right_pad([labels for _, labels in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def predictions(model: nn.Module, batches: list[Batch]) -> list[list[int]]:
    """For each example, its predicted label (a list of one), or the predicted label at each counted token."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    found: list[list[int]] = []
    for batch in map(partial(to_device, device=device), batches):
        best = model(batch["input_ids"], mask=batch["attention_mask"]).argmax(dim=-1)  # (B,) or (B, T)
        if best.dim() == 1:
            found += [[int(label)] for label in best]
        else:
            counted = batch["labels"] != IGNORE
            found += [row[keep].tolist() for row, keep in zip(best, counted)]
    model.train(was_training)
    return found


def gold_labels(examples: list[Example]) -> list[list[int]]:
    return [[labels] if isinstance(labels, int) else [t for t in labels if t != IGNORE] for _, labels in examples]


def scores(task: LabelledTask, predicted: list[list[int]], gold: list[list[int]]) -> dict[str, float]:
    """Accuracy of one label per text; entity-level precision, recall and F1 of BIO tags."""
    if not task.per_token:
        return {"accuracy": accuracy([p[0] for p in predicted], [g[0] for g in gold])}
    names = task.labels
    entity = entity_scores([[names[t] for t in p] for p in predicted], [[names[t] for t in g] for g in gold])
    return {"f1": entity.f1, "precision": entity.precision, "recall": entity.recall}


def validation_metrics(task: LabelledTask, batches: list[Batch], gold: list[list[int]], model: nn.Module) -> dict:
    return {f"eval_{name}": value for name, value in scores(task, predictions(model, batches), gold).items()}


def train_config(task: LabelledTask, n_train: int) -> TrainConfig:
    steps = max(1, task.epochs * (n_train // task.batch_size))
    return TrainConfig(max_steps=steps, global_batch=task.batch_size, micro_batch=task.batch_size, lr=task.lr,
                       min_lr=0.0, warmup_steps=min(task.warmup_steps, steps // 2), weight_decay=task.weight_decay,
                       betas=(0.9, 0.999), embedding_lr_scale=task.embedding_lr_scale, precision="bf16" if native_bfloat16() else "fp32",
                       eval_every=max(1, steps // task.evaluations), checkpoint_every=max(1, steps // task.evaluations))


def extended_encoder(encoder: SentenceEncoder, task: LabelledTask, splits: Splits, folder: Path) -> SentenceEncoder:
    """The encoder with the training split's unknown characters in its vocabulary, saved in
    `folder` (RUN_DIR/encoder) the first time and read from there by a resumed run."""
    if not (folder / "config.json").is_file():
        texts = ["".join(chars) for chars, _ in splits.train] if task.per_token else [t for t, _ in splits.train]
        extend_vocabulary(encoder.path, unknown_characters(encoder.tokenizer, texts), folder, task.seed)
    return load_encoder(folder)


def check_encoder(encoder: SentenceEncoder) -> None:
    if encoder.model.config.causal:
        raise NextTokenError(f"{encoder.path}: a decoder (causal attention), not an encoder to put a head on")
    if encoder.tokenizer.bos_id is None or encoder.tokenizer.eos_id is None:
        raise NextTokenError(f"{encoder.path}: its tokenizer has no [CLS] and [SEP]")


def check_out(out: Path | None) -> None:
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NextTokenError(f"{out} already exists and is not empty: save the model to another folder")


def run_labelled_finetune(task: LabelledTask, run_dir: str | Path, model: Path | None = None, out: Path | None = None,
                          resume: bool = False, progress: bool = True) -> LabelledResult:
    """Fine-tune, evaluate on the test split, and save (see the module docstring). Everything that
    can be wrong with the settings, the data or the folders is found before any training."""
    run_dir = Path(run_dir)
    check_out(out)
    if (run_dir / TEST_FILE).exists():
        raise NextTokenError(f"{run_dir} holds a finished run ({TEST_FILE}): train into another folder")
    splits = task_splits(task)
    encoder = load_encoder(model)
    check_encoder(encoder)
    if task.extend_vocabulary:
        encoder = extended_encoder(encoder, task, splits, run_dir / ENCODER_FOLDER)
    pad_id = encoder.tokenizer.pad_id or 0
    train_set, validation, test = (encode_examples(encoder, task, rows)
                                   for rows in (splits.train, splits.validation, splits.test))
    config = replace(train_config(task, len(train_set)), progress=progress)
    batch_of = partial(collate, pad_id=pad_id)
    classifier = classifier_for(encoder, len(task.labels), task.per_token, task.seed)
    objective = token_classification_loss if task.per_token else sequence_classification_loss
    validation_batches = fixed_batches(validation, task.batch_size, batch_of)
    data = ExampleLoader(train_set, task.batch_size, batch_of, seed=task.seed,
                         lengths=[len(ids) for ids, _ in train_set])
    saved = latest_checkpoint(run_dir) if resume else None
    first_step = int(saved.name.removeprefix("step_")) if saved is not None else 0
    result = train(classifier, data, objective, config, run_dir, eval_data=validation_batches, resume=resume,
                   eval_metrics=partial(validation_metrics, task, validation_batches, gold_labels(validation)))
    classifier.eval().requires_grad_(False)
    test_scores = scores(task, predictions(classifier, fixed_batches(test, task.batch_size, batch_of)),
                         gold_labels(test))
    rate = (result.step - first_step) * task.batch_size / max(result.seconds, 1e-9)
    test_scores |= {"examples": len(test), "train_examples": len(train_set), "steps": result.step,
                    "examples_per_second": rate}
    write_json(run_dir / TEST_FILE, test_scores)
    if out is not None:
        save_classifier(classifier, encoder.path, list(task.labels), out)
    return LabelledResult(result, test_scores, rate)

