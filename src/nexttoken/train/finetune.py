"""Fine-tuning recipes on the training loop: supervised fine-tuning of a chat decoder (in full or
with LoRA, merged afterwards and exportable), and classification heads on an encoder (one label per
text, or one per word), with the data sets of nexttoken.train.sft_data.

Each recipe turns examples into batches, picks an objective `(model, batch) -> (loss, n_tokens)` and
calls `train`; the loop does the rest (optimiser, schedule, checkpoints, metrics)."""

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.decoding.config import GenerationConfig
from nexttoken.apps.tools import plain_messages
from nexttoken.encoder.classifier import EncoderClassifier, save_classifier, word_pieces
from nexttoken.encoder.sentence import SentenceEncoder, load_encoder, right_pad
from nexttoken.errors import NextTokenError
from nexttoken.model.heads import SequenceClassifier, TokenClassifier
from nexttoken.pretrained import LanguageModel, load
from nexttoken.tokenizer.training import shakespeare_files
from nexttoken.train.export import export_gguf, export_hf
from nexttoken.train.lora import LoraConfig, add_lora, merge_lora
from nexttoken.train.loop import TrainConfig, TrainResult, to_device, train
from nexttoken.train.masking import labelled_token_loss, sft_batch, sft_tokens
from nexttoken.train.objectives import IGNORE, counted_token_loss
from nexttoken.train.sft_data import person_tags, play_lines, read_plays, sft_conversations
from nexttoken.train.tool_data import conversation, offered_functions, tool_cases
from nexttoken.train.tool_eval import ToolScores, tool_use_scores

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]


class ExampleLoader:
    """An endless iterator of batches over a fixed list of examples: each epoch a seeded shuffle,
    cut into batches of `batch_size` and collated. Its state is the number of batches taken, so a
    resumed run sees the same batches as one never stopped.

    With `lengths` (each example's length in tokens) the batches hold examples of similar length,
    as transformers' `group_by_length` makes them: the shuffled epoch is cut into runs of
    `batch_size * GROUP` examples, each run sorted by length and cut into batches, and the batches
    are shuffled. Padding to the longest of a batch then costs little: on tweets and reviews a
    shuffled batch of 32 is 1.75 to 2.1 times its real tokens."""

    GROUP = 50

    def __init__(self, examples: list[Any], batch_size: int, collate: Callable[[list[Any]], Batch],
                 seed: int = 0, lengths: list[int] | None = None) -> None:
        if len(examples) < batch_size:
            raise NextTokenError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
        self.examples, self.batch_size, self.collate, self.seed = examples, batch_size, collate, seed
        self.lengths = lengths
        self.per_epoch = len(examples) // batch_size
        self.taken = 0
        self._epoch: tuple[int, list[list[int]]] | None = None  # (epoch, its batches), cached

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        epoch, index = divmod(self.taken, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.epoch_batches(epoch))
        self.taken += 1
        return self.collate([self.examples[i] for i in self._epoch[1][index]])

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The indices of each batch of `epoch`, a pure function of the seed and the epoch."""
        rng = random.Random(self.seed + epoch)
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        order = order[: self.per_epoch * self.batch_size]  # the remainder waits for another epoch's shuffle
        if self.lengths is None:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        run = self.batch_size * self.GROUP
        batches = []
        for start in range(0, len(order), run):
            chunk = sorted(order[start : start + run], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = int(state["taken"])


def fixed_batches(examples: list[Any], batch_size: int, collate: Callable[[list[Any]], Batch]) -> list[Batch]:
    """Evaluation batches, in order."""
    return [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch], objective: Objective) -> float:
    """The loss per counted target over `batches`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    for batch in batches:
        loss, n = objective(model, to_device(batch, device))
        total, count = total + loss.item() * int(n), count + int(n)
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class FinetuneResult:
    train: TrainResult
    eval_before: float  # held-out loss before training
    eval_after: float
    accuracy_before: float | None = None  # held-out accuracy, where the task has one
    accuracy_after: float | None = None
    tool_use: dict[str, ToolScores] = field(default_factory=dict)  # "tools": "before"/"after", "free"/"constrained"


# --- supervised fine-tuning of a chat decoder --------------------------------------------------


def sft_examples(lm: LanguageModel, conversations: list[list[dict[str, str]]]) -> list[tuple[list[int], list[bool]]]:
    return [sft_tokens(lm.tokenizer, conversation) for conversation in conversations]


def finetune_chat(lm: LanguageModel, conversations: list[list[dict[str, str]]], held_out: list[list[dict[str, str]]],
                  config: TrainConfig, run_dir: str | Path, max_len: int = 256,
                  lora: LoraConfig | None = None) -> FinetuneResult:
    """Train `lm` on the assistant replies of `conversations`, in full or (with `lora`) through
    adapters that are merged into its weights at the end; `lm.model` is changed in place."""
    collate = partial(sft_batch, pad_id=lm.pad_id, max_len=max_len)
    evaluation = fixed_batches(sft_examples(lm, held_out), config.micro_batch, collate)
    model = lm.model
    before = mean_loss(model, evaluation, counted_token_loss)
    if lora is not None:
        add_lora(model, lora)
    else:
        model.requires_grad_(True)
    data = ExampleLoader(sft_examples(lm, conversations), config.micro_batch, collate)
    result = train(model, data, counted_token_loss, config, run_dir)
    model.eval().requires_grad_(False)
    if lora is not None:
        merge_lora(model)
    return FinetuneResult(result, before, mean_loss(model, evaluation, counted_token_loss))


def answer_accuracy(lm: LanguageModel, conversations: list[list[dict[str, str]]], max_new_tokens: int = 12) -> float:
    """Share of conversations whose last assistant reply the model writes exactly, greedily."""
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    right = 0
    for turns in conversations:
        prompt = lm.tokenizer.apply_chat_template(turns[:-1], add_generation_prompt=True)
        completion = lm.generate(lm.tokenizer.encode(prompt, add_bos=False if lm.template_has_bos else None), config)
        right += completion.text.strip() == turns[-1]["content"].strip()
    return right / max(len(conversations), 1)


# --- classification heads on an encoder --------------------------------------------------------


def sequence_classification_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of one label per input. batch: "input_ids" (B, T), "attention_mask" (B, T),
    "labels" (B,)."""
    logits = model(batch["input_ids"], mask=batch.get("attention_mask"))  # (B, n_labels)
    return F.cross_entropy(logits.float(), batch["labels"]), torch.tensor(batch["labels"].shape[0])


# one label per word: cross-entropy at each word's first token, the others IGNORE (BERT §4.3)
token_classification_loss = labelled_token_loss


def text_batch(encoder: SentenceEncoder, rows: list[tuple[str, int]]) -> Batch:
    ids, mask = right_pad([encoder.encode(text) for text, _ in rows], encoder.tokenizer.pad_id or 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([label for _, label in rows])}


def word_labels(encoder: SentenceEncoder, words: list[str], tags: list[int]) -> tuple[list[int], list[int]]:
    """[CLS] tokens [SEP] and a label per token: each word's tag on its first token, IGNORE on the
    rest of the word and on [CLS] and [SEP]."""
    ids, firsts = word_pieces(encoder, words)
    labels = [IGNORE] * len(ids)
    for first, tag in zip(firsts, tags):
        if first is not None:
            labels[first] = tag
    return ids, labels


def tagged_batch(encoder: SentenceEncoder, rows: list[tuple[list[int], list[int]]]) -> Batch:
    ids, mask = right_pad([ids for ids, _ in rows], encoder.tokenizer.pad_id or 0)
    labels, _ = right_pad([labels for _, labels in rows], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def tagged_words_batch(encoder: SentenceEncoder, rows: list[tuple[list[str], list[int]]]) -> Batch:
    return tagged_batch(encoder, [word_labels(encoder, words, tags) for words, tags in rows])


def classifier_for(encoder: SentenceEncoder, n_labels: int, per_token: bool, seed: int = 0,
                   freeze_embeddings: bool = False) -> EncoderClassifier:
    """The encoder with a new head, all trainable but (with `freeze_embeddings`) the embedding
    tables: half of MiniLM's weights, which a small labelled set barely moves anyway."""
    torch.manual_seed(seed)
    config = encoder.model.config
    head = TokenClassifier(config, n_labels) if per_token else SequenceClassifier(config, n_labels)
    model = encoder.model.requires_grad_(True)
    if freeze_embeddings:
        for table in (model.embed, model.pos_embed, model.type_embed):
            if table is not None:
                table.requires_grad_(False)
    return EncoderClassifier(model, head)


@torch.no_grad()
def classification_accuracy(model: nn.Module, batches: list[Batch]) -> float:
    """Share of labels (one per text, or one per counted word) predicted right."""
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for batch in map(partial(to_device, device=device), batches):
        predicted = model(batch["input_ids"], mask=batch["attention_mask"]).argmax(dim=-1)
        counted = batch["labels"] != IGNORE
        right += int((predicted == batch["labels"])[counted].sum())
        total += int(counted.sum())
    return right / max(total, 1)


def finetune_classifier(encoder: SentenceEncoder, train_rows: list, held_out: list, n_labels: int,
                        config: TrainConfig, run_dir: str | Path, per_token: bool = False, seed: int = 0,
                        freeze_embeddings: bool = False,
                        lora: LoraConfig | None = None) -> tuple[EncoderClassifier, FinetuneResult]:
    """Fine-tune `encoder` (in place) with a new head: `rows` are (text, label) pairs, or with
    `per_token` (words, tags) pairs; returns the classifier and held-out loss and accuracy before
    and after. With `lora`, the encoder trains through adapters, merged at the end; the head trains
    in full."""
    if per_token:
        collate = partial(tagged_words_batch, encoder)
        objective: Objective = token_classification_loss
    else:
        collate = partial(text_batch, encoder)
        objective = sequence_classification_loss
    model = classifier_for(encoder, n_labels, per_token, seed, freeze_embeddings)
    evaluation = fixed_batches(held_out, config.micro_batch, collate)
    before, accuracy_before = mean_loss(model, evaluation, objective), classification_accuracy(model, evaluation)
    if lora is not None:
        add_lora(model.encoder, lora)
    result = train(model, ExampleLoader(train_rows, config.micro_batch, collate), objective, config, run_dir)
    model.eval().requires_grad_(False)
    if lora is not None:
        merge_lora(model.encoder)
    return model, FinetuneResult(result, before, mean_loss(model, evaluation, objective), accuracy_before,
                                 classification_accuracy(model, evaluation))


# --- the `nexttoken finetune` tasks ------------------------------------------------------------

TASKS = ("chat", "play", "names", "tools")
MAX_LEN = {"tools": 1024}  # tokens of an example: the tool section alone is about 500
# Steps and training examples where a task needs more than 50 and 400: learning when no offered
# function fits takes the tool-use set longer than learning the calls (docs/training.md#tool-use)
STEPS, EXAMPLES = {"tools": 150}, {"tools": 600}
NAME_TAGS = ["O", "PERSON"]  # "names": tag 1 marks a word that names a person of the play


def native_bfloat16() -> bool:
    """Whether this machine multiplies bfloat16 in hardware: a GPU from Ampere on, or a CPU with
    AVX512-BF16 or AMX. There bf16 autocast fine-tunes faster at the same held-out loss (measured on this 2-core
    machine: MiniLM names 1.18x, SmolLM2 chat LoRA 1.34x); elsewhere the CPU emulates bfloat16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def split(rows: list, n_train: int) -> tuple[list, list]:
    if len(rows) <= n_train:
        raise NextTokenError(f"only {len(rows)} examples: fewer than the {n_train} to train on plus some held out")
    return rows[:n_train], rows[n_train:]


def run_finetune(task: str, run_dir: Path, model: Path | None = None, steps: int | None = None, batch_size: int = 4,
                 lr: float | None = None, lora_rank: int = 8, examples: int | None = None, eval_examples: int = 32,
                 max_len: int | None = None, out: Path | None = None, n_plays: int = 4) -> FinetuneResult:
    """Fine-tune on a set built from the Shakespeare plays (see nexttoken.train.sft_data):
    "chat": SFT of a chat decoder (default: the built-in SmolLM2-135M-Instruct) to say who speaks a
    line and to continue speeches; "play": which play a line is from, and "names": which words name
    a person of the play, both on an encoder (default: the built-in MiniLM) with a new head; "play"
    chooses among the first `n_plays` plays. Or "tools": SFT of a chat decoder to call functions
    (nexttoken.train.tool_data), scored on held-out requests before and after (`tool_use`).
    `steps` and `examples` default to the task's (STEPS, EXAMPLES). `lora_rank` 0 trains every weight. `out` receives the fine-tuned model: for "chat" and "tools" a Hugging
    Face folder, or a GGUF file when it ends in .gguf; for the others a BertForSequenceClassification
    or BertForTokenClassification folder (nexttoken.encoder.classifier.load_classifier reads it)."""
    if task not in TASKS:
        raise NextTokenError(f"unknown fine-tuning task {task!r} (tasks: {', '.join(TASKS)}, sentiment, ner)")
    if lora_rank < 0 or eval_examples < 1:
        raise NextTokenError(f"the LoRA rank must be 0 (train every weight) or more and the held-out examples at "
                             f"least 1, got {lora_rank} and {eval_examples}")
    max_len = max_len or MAX_LEN.get(task, 256)
    steps = STEPS.get(task, 50) if steps is None else steps
    examples = EXAMPLES.get(task, 400) if examples is None else examples
    plays = [] if task == "tools" else read_plays(shakespeare_files())
    if task == "play" and not 2 <= n_plays <= len(plays):
        raise NextTokenError(f"the play task tells 2 to {len(plays)} plays apart, not {n_plays}")
    lora = LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank) if lora_rank else None
    precision = "bf16" if native_bfloat16() else "fp32"
    lr = lr or (1e-3 if lora else 1e-4)  # adapters start at zero and are few: they take larger steps
    config = TrainConfig(max_steps=steps, global_batch=batch_size, micro_batch=batch_size, lr=lr, min_lr=lr / 10,
                         warmup_steps=min(10, steps // 10), precision=precision, checkpoint_every=0,
                         eval_every=steps)
    if task == "chat":
        return chat_task(load(model, dtype="float32"), plays, config, run_dir, examples, eval_examples, max_len, lora, out)
    if task == "tools":
        return tools_task(load(model, dtype="float32"), config, run_dir, examples, eval_examples, max_len, lora, out)
    encoder = load_encoder(model)
    if lora is not None:  # the encoder's own projection names
        lora = LoraConfig(rank=lora.rank, alpha=lora.alpha, targets=("wqkv", "wo", "w_up", "w_down"))
    if task == "play":
        chosen = plays[:n_plays]
        per_play = -(-(examples + eval_examples) // len(chosen))
        rows, labels, per_token = play_lines(chosen, per_play), [play.title for play in chosen], False
    else:
        rows, labels, per_token = person_tags(plays, examples + eval_examples), NAME_TAGS, True
    if out is not None and out.suffix == ".gguf":
        raise NextTokenError(f"{out}: a classifier is saved as a Hugging Face folder, not a GGUF file")
    train_rows, held_out = split(rows, examples)
    classifier, result = finetune_classifier(encoder, train_rows, held_out[:eval_examples], len(labels), config,
                                             run_dir, per_token=per_token, lora=lora)
    if out is not None:
        save_classifier(classifier, encoder.path, labels, out)
    return result


def chat_task(lm: LanguageModel, plays: list, config: TrainConfig, run_dir: Path, examples: int, eval_examples: int,
              max_len: int, lora: LoraConfig | None, out: Path | None) -> FinetuneResult:
    train_set, held_out = split(sft_conversations(plays, examples + eval_examples), examples)
    who = [c for c in held_out if c[0]["content"].startswith("Who says")]
    accuracy_before = answer_accuracy(lm, who)
    result = finetune_chat(lm, train_set, held_out, config, run_dir, max_len, lora)
    result.accuracy_before, result.accuracy_after = accuracy_before, answer_accuracy(lm, who)
    export_chat_model(lm, out)
    return result


def export_chat_model(lm: LanguageModel, out: Path | None) -> None:
    if out is not None:
        if out.suffix == ".gguf":
            export_gguf(lm.model, lm.tokenizer, out)
        else:
            export_hf(lm.model, lm.tokenizer, out)


def tool_use(lm: LanguageModel, cases: list) -> dict[str, ToolScores]:
    return {mode: tool_use_scores(lm, cases, constrained=mode == "constrained") for mode in ("free", "constrained")}


def tools_task(lm: LanguageModel, config: TrainConfig, run_dir: Path, examples: int, eval_examples: int,
               max_len: int, lora: LoraConfig | None, out: Path | None) -> FinetuneResult:
    """SFT on calls of the five functions of train/tool_data.py and on direct answers to requests
    that no offered function fits, each conversation in the prompt form of apps/tools.py with its
    case's offered functions; tool use measured before and after on held-out requests whose
    wording training never saw. The accuracy reported is the share with every argument right,
    constrained."""
    train_set = [plain_messages(conversation(case), offered_functions(case)) for case in tool_cases("train", examples)]
    held_out = tool_cases("held_out", eval_examples)
    before = tool_use(lm, held_out)
    result = finetune_chat(lm, train_set, [plain_messages(conversation(c), offered_functions(c)) for c in held_out],
                           config, run_dir, max_len, lora)
    after = tool_use(lm, held_out)
    result.tool_use = {f"{mode} {when}": scores for when, measured in (("before", before), ("after", after))
                       for mode, scores in measured.items()}
    result.accuracy_before = before["constrained"].right_arguments
    result.accuracy_after = after["constrained"].right_arguments
    export_chat_model(lm, out)
    return result
