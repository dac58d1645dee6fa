"""`nexttoken finetune sentiment|ner` beside transformers' Trainer and a classical baseline, in one run.

    .venv/bin/python benchmarks/bench_finetune.py sentiment --lang en|zh [--train N] [--epochs E] [--lr LR]
    .venv/bin/python benchmarks/bench_finetune.py ner [--train N] [--test N]

With no options each run is the recipe's default (LabelledTask): the same examples, epochs, batch
and learning rate as `nexttoken finetune`. All three learn from the same examples of the same fixed
split (nexttoken.train.labelled_data) and are scored on the same test set. Ours is
run_labelled_finetune (MiniLM, a new head, every weight trained) with one validation pass at the
end; the Trainer fine-tunes AutoModelForSequenceClassification / AutoModelForTokenClassification
from the same MiniLM folder (for Chinese, the one ours extended with the training split's
characters) on the same token ids, with the same epochs, batch size, peak learning rate, warmup,
cosine decay to 0, weight decay, AdamW betas, the word-embedding table's learning-rate scale (a
custom optimizer), gradient clipping, bfloat16 autocast where the CPU multiplies bfloat16, the
same batches in the same order (ours' length-grouped ExampleLoader, fed to its sequential
sampler), no dropout (ours has none; the Trainer's model is loaded with BERT's dropouts set to 0) and the same first weights: our new head's pooler and output
layer are copied into the Trainer's model, whose logits then equal ours before training. The
classical baselines: TF-IDF (word 1-2-grams for English, character 1-2-grams for Chinese) with
logistic regression for sentiment; for NER each character's most frequent tag in the training set
("O" for a character never seen). Wall time is the training alone for the Trainer and the baseline,
and ours' whole `train` call (with its one validation pass and final checkpoint); examples/s is
training examples (times epochs) over that time. The table is printed as Markdown."""

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

import torch

from nexttoken.encoder.sentence import builtin_encoder_path, load_encoder
from nexttoken.train.finetune import ExampleLoader, classifier_for, native_bfloat16
from nexttoken.train.labelled_tasks import (ENCODER_FOLDER, LabelledTask, collate, encode_examples, gold_labels, run_labelled_finetune,
                                            scores, task_splits, train_config)
from nexttoken.train.loop import TrainConfig
from nexttoken.train.metrics import read_metrics
from nexttoken.train.objectives import IGNORE
from nexttoken.train.schedule import learning_rate


def ours(task: LabelledTask, folder: Path) -> dict:
    result = run_labelled_finetune(task, folder / "ours", progress=False)
    losses = [r["loss"] for r in read_metrics(folder / "ours") if "loss" in r]
    return {"score": result.test, "seconds": result.train.seconds, "per_second": result.examples_per_second,
            "losses": losses}


def optimizer_like_ours(model: torch.nn.Module, task: LabelledTask, config: TrainConfig) -> tuple:
    """Fused AdamW with weight decay on matrices only and the word-embedding table at
    `embedding_lr_scale` times the rate (nexttoken.train.loop.make_optimizer), and ours' schedule:
    warmup then cosine to 0, where transformers' warmup spends its first step at a rate of 0."""

    table = model.get_input_embeddings().weight
    rest = [p for p in model.parameters() if p is not table]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": task.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
              {"params": [table], "weight_decay": task.weight_decay, "lr": task.lr * task.embedding_lr_scale}]
    optimizer = torch.optim.AdamW(groups, lr=task.lr, betas=config.betas, fused=True)
    schedule = partial(learning_rate, peak=1.0, floor=0.0, warmup_steps=config.warmup_steps, total_steps=config.max_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@torch.no_grad()
def start_like_ours(model: torch.nn.Module, head: torch.nn.Module) -> None:
    """Give the Trainer's model our new head's first weights: ours starts from a new pooler (BERT's
    dense + tanh) and output layer, where from_pretrained would keep the checkpoint's pooler."""
    pairs = [(model.classifier, head.out)]
    if hasattr(head, "pooler"):
        pairs.append((model.bert.pooler.dense, head.pooler.dense))
    for theirs, mine in pairs:
        theirs.weight.copy_(mine.weight)
        theirs.bias.copy_(mine.bias)


def trainer(task: LabelledTask, folder: Path) -> dict:
    """transformers' Trainer on our token ids (MiniLM's tokenizer gives the same ids; tests/test_wordpiece.py)."""
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, PrinterCallback,
                              Trainer, TrainingArguments)

    extended = folder / "ours" / ENCODER_FOLDER  # ours wrote it, where the task extends the vocabulary
    source = extended if extended.is_dir() else builtin_encoder_path()
    encoder = load_encoder(source)
    splits = task_splits(task)
    train_set, test = encode_examples(encoder, task, splits.train), encode_examples(encoder, task, splits.test)
    config = train_config(task, len(train_set))
    kind = AutoModelForTokenClassification if task.per_token else AutoModelForSequenceClassification
    torch.manual_seed(task.seed)
    # no dropout, as ours: the same model on both sides
    model = kind.from_pretrained(source, num_labels=len(task.labels), hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    start_like_ours(model, classifier_for(encoder, len(task.labels), task.per_token, task.seed).head)
    # ours' batches in ours' order (length-grouped, seeded): the two loops then differ only in their
    # arithmetic, where two shuffles of a few hundred steps moved the scores by several points
    batches = ExampleLoader(train_set, task.batch_size, list, seed=task.seed, lengths=[len(ids) for ids, _ in train_set])
    rows = [{"input_ids": ids, "labels": labels} for _ in range(config.max_steps) for ids, labels in next(batches)]

    def batch_of(features: list[dict]) -> dict:
        batch = collate([(f["input_ids"], f["labels"]) for f in features], pad_id=encoder.tokenizer.pad_id)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"].long(),
                "labels": batch["labels"]}

    arguments = TrainingArguments(
        output_dir=str(folder / "trainer"), per_device_train_batch_size=task.batch_size, num_train_epochs=task.epochs,
        max_steps=config.max_steps, learning_rate=task.lr,
        weight_decay=task.weight_decay, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        bf16=config.precision == "bf16", use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[],
        seed=task.seed, train_sampling_strategy="sequential", dataloader_num_workers=0,
        logging_steps=1, disable_tqdm=True)
    run = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=batch_of,
                  optimizers=optimizer_like_ours(model, task, config))
    run.remove_callback(PrinterCallback)  # every step's loss is logged, for the comparison; not printed
    start = time.perf_counter()
    run.train()
    seconds = time.perf_counter() - start
    model.eval()
    predicted = []
    with torch.no_grad():
        for i in range(0, len(test), task.batch_size):
            batch = batch_of([{"input_ids": ids, "labels": labels} for ids, labels in test[i:i + task.batch_size]])
            best = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            if task.per_token:
                predicted += [row[keep].tolist() for row, keep in zip(best, batch["labels"] != IGNORE)]
            else:
                predicted += [[int(label)] for label in best]
    return {"score": scores(task, predicted, gold_labels(test)), "seconds": seconds,
            "per_second": config.max_steps * task.batch_size / seconds,
            "losses": [r["loss"] for r in run.state.log_history if "loss" in r]}


def classical(task: LabelledTask) -> dict:
    splits = task_splits(task)
    start = time.perf_counter()
    if task.per_token:
        counts: dict[str, Counter] = {}
        for chars, tags in splits.train:
            for char, tag in zip(chars, tags):
                counts.setdefault(char, Counter())[tag] += 1
        best = {char: c.most_common(1)[0][0] for char, c in counts.items()}
        seconds = time.perf_counter() - start
        predicted = [[best.get(char, 0) for char in chars] for chars, _ in splits.test]
        return {"score": scores(task, predicted, [tags for _, tags in splits.test]), "seconds": seconds,
                "per_second": len(splits.train) / seconds}
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    words = dict(analyzer="char", ngram_range=(1, 2)) if task.lang == "zh" else dict(ngram_range=(1, 2))
    vectorizer = TfidfVectorizer(sublinear_tf=True, **words)
    features = vectorizer.fit_transform([text for text, _ in splits.train])
    model = LogisticRegression(max_iter=1000).fit(features, [label for _, label in splits.train])
    seconds = time.perf_counter() - start
    predicted = model.predict(vectorizer.transform([text for text, _ in splits.test]))
    return {"score": scores(task, [[int(p)] for p in predicted], [[label] for _, label in splits.test]),
            "seconds": seconds, "per_second": len(splits.train) * task.epochs / seconds}


def loss_comparison(ours: list[float], theirs: list[float]) -> str:
    """The two loops' training losses step by step (the same batches): where they part, and by how much."""
    pairs = list(zip(ours, theirs))
    gaps = [abs(a - b) for a, b in pairs]
    mean = lambda values: sum(values) / max(len(values), 1)  # noqa: E731
    tenth = max(1, len(pairs) // 10)
    lines = [f"\ntraining loss, ours / Trainer ({len(pairs)} steps): step 1 {ours[0]:.4f} / {theirs[0]:.4f}; "
             f"mean |difference| steps 1-10 {mean(gaps[:10]):.4f}, all steps {mean(gaps):.4f}; "
             f"mean of the last {tenth} steps {mean(ours[-tenth:]):.4f} / {mean(theirs[-tenth:]):.4f}"]
    for first in range(0, len(pairs), tenth):
        chunk = pairs[first : first + tenth]
        lines.append(f"  steps {first + 1}-{first + len(chunk)}: {mean([a for a, _ in chunk]):.4f} / "
                     f"{mean([b for _, b in chunk]):.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["sentiment", "ner"])
    parser.add_argument("--lang", default="en")
    parser.add_argument("--train", type=int, help="Training examples (default: the recipe's).")
    parser.add_argument("--validation", type=int, help="Validation examples (default: the recipe's).")
    parser.add_argument("--test", type=int, help="Test examples (default: the recipe's).")
    parser.add_argument("--epochs", type=int, help="Epochs (default: the recipe's).")
    parser.add_argument("--batch", type=int, help="Batch size (default: the recipe's).")
    parser.add_argument("--lr", type=float, help="Peak learning rate (default: the recipe's).")
    args = parser.parse_args()
    lang = "zh" if args.task == "ner" else args.lang
    settings = {"train_examples": args.train, "validation_examples": args.validation, "test_examples": args.test,
                "epochs": args.epochs, "batch_size": args.batch, "lr": args.lr}
    task = LabelledTask(args.task, lang, evaluations=1, **{k: v for k, v in settings.items() if v is not None})
    metric = "f1" if task.per_token else "accuracy"
    print(f"{task.task} {task.lang}: {task.train_examples} training examples x {task.epochs} epoch(s), "
          f"{task.test_examples} test, batch {task.batch_size}, lr {task.lr} (embeddings x{task.embedding_lr_scale:g}), "
          f"warmup {task.warmup_steps}, {torch.get_num_threads()} threads, {'bf16' if native_bfloat16() else 'fp32'}; CPU {os.cpu_count()} cores")
    folder = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    try:
        results = {"nexttoken": ours(task, folder), "transformers Trainer": trainer(task, folder),
                   "classical baseline": classical(task)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n| run | test {metric} | wall s | training examples/s |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['score'][metric]:.1%} | {r['seconds']:.1f} | {r['per_second']:.1f} |")
    ratio = results["nexttoken"]["per_second"] / results["transformers Trainer"]["per_second"]
    gap = results["nexttoken"]["score"][metric] - results["transformers Trainer"]["score"][metric]
    over = {name: results[name]["score"][metric] - results["classical baseline"]["score"][metric]
            for name in ("nexttoken", "transformers Trainer")}
    print(loss_comparison(results["nexttoken"]["losses"], results["transformers Trainer"]["losses"]))
    print(f"\nours / Trainer: {ratio:.2f}x examples/s, {gap * 100:+.1f} points; over the baseline: "
          f"ours {over['nexttoken'] * 100:+.1f}, Trainer {over['transformers Trainer'] * 100:+.1f} points")


if __name__ == "__main__":
    main()
