"""An encoder with a classification head, saved and loaded as a Hugging Face BertForSequenceClassification
or BertForTokenClassification folder, so that `transformers` (and its pipelines) reads what
nexttoken fine-tuned, and nexttoken reads it back to label texts or tag their words.

    model, result = finetune_classifier(encoder, ...)      # nexttoken.train.finetune
    save_classifier(model, encoder.path, ["Hamlet", "Macbeth"], "runs/plays")
    classifier = load_classifier("runs/plays")
    classifier.classify(["Out, damned spot!"])   # [{"Macbeth": p, "Hamlet": 1 - p}], most likely first"""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from nexttoken.accel.accelerate import accelerate
from nexttoken.encoder.sentence import SentenceEncoder, encoder_from, right_pad
from nexttoken.errors import NextTokenError
from nexttoken.families import bert
from nexttoken.families.weights import expand, unstack_parts
from nexttoken.loaders.safetensors import load_hf_model
from nexttoken.model.heads import SequenceClassifier, TokenClassifier

ARCHITECTURES = {SequenceClassifier: "BertForSequenceClassification", TokenClassifier: "BertForTokenClassification"}
# the tokenizer's files, copied from the folder the encoder came from
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Chinese characters: each one a word, as BERT splits them
# the words a token classifier labels: "thou'rt", ",", "Horatio", "北", "京"
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+(?:'[^\W{CJK}]+)?|[^\w\s]")


class EncoderClassifier(nn.Module):
    """An encoder with a classification head: (B, T) ids -> (B, n_labels) for a SequenceClassifier,
    (B, T, n_labels) for a TokenClassifier."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder.hidden_states(ids, mask=mask))


def hf_tensors(classifier: EncoderClassifier) -> dict[str, torch.Tensor]:
    """Hugging Face names -> float32 tensors; the encoder's under "bert.", the classifier's not.
    The BERT weight map names the heads' own parameters (pooler.dense, out)."""
    state = classifier.encoder.state_dict() | classifier.head.state_dict()
    rows = [row for row in expand(bert.WEIGHTS, classifier.encoder.config.n_layer) if row.ours in state]
    missing = sorted(set(state) - {row.ours for row in rows})
    if missing:
        raise NextTokenError(f"the classifier has weights BERT's layout lacks ({', '.join(missing[:3])}): merge "
                             "LoRA adapters before saving")
    return {(row.hf if row.hf.startswith("classifier.") else bert.HF_PREFIX + row.hf): part.float().contiguous()
            for row, part in unstack_parts(state, rows, classifier.encoder.config)}


def save_classifier(classifier: EncoderClassifier, source: str | Path, labels: list[str], folder: str | Path) -> Path:
    """Write `classifier` to `folder` with the config and tokenizer of `source`, the Hugging Face
    folder its encoder was loaded from, and `labels` (by index) as id2label."""
    source, folder = Path(source), Path(folder)
    n_labels = classifier.head.out.out_features
    if len(labels) != n_labels:
        raise NextTokenError(f"{len(labels)} label names for a head of {n_labels} labels")
    tensors = hf_tensors(classifier)
    config = json.loads((source / "config.json").read_text())
    config |= {"architectures": [ARCHITECTURES[type(classifier.head)]],
               "id2label": {str(i): label for i, label in enumerate(labels)},
               "label2id": {label: i for i, label in enumerate(labels)}}
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    return folder


def words_of(text: str) -> list[str]:
    return WORD.findall(text)


def word_pieces(encoder: SentenceEncoder, words: list[str]) -> tuple[list[int], list[int | None]]:
    """[CLS] the words' pieces [SEP], and where each word's first piece is (BERT §4.3 labels a word
    there); None for a word with no pieces or beyond the encoder's length limit."""
    ids, firsts = [encoder.tokenizer.bos_id], []
    limit = encoder.pooling.max_tokens - 1
    for word in words:
        pieces = encoder.tokenizer.encode(word, add_bos=False, add_eos=False)
        firsts.append(len(ids) if pieces and len(ids) < limit else None)
        ids += pieces
    return ids[:limit] + [encoder.tokenizer.eos_id], firsts


@dataclass
class TextClassifier:
    encoder: SentenceEncoder  # the tokenizer and the [CLS] ... [SEP] framing
    model: EncoderClassifier
    labels: list[str]  # by index

    @property
    def per_token(self) -> bool:
        return isinstance(self.model.head, TokenClassifier)

    @torch.inference_mode()
    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        """Each text's probability of every label, the most likely first (a sequence classifier)."""
        if self.per_token:
            raise NextTokenError(f"{self.encoder.path}: a token classifier tags words (tag), it does not "
                                 "classify texts")
        ids, mask = right_pad([self.encoder.encode(text) for text in texts], self.encoder.tokenizer.pad_id or 0)
        probabilities = self.model(ids, mask=mask).float().softmax(dim=-1)  # (B, n_labels)
        return [dict(sorted(zip(self.labels, row.tolist()), key=lambda pair: -pair[1])) for row in probabilities]

    @torch.inference_mode()
    def tag(self, text: str) -> list[tuple[str, str]]:
        """Each word of `text` with its most likely label (a token classifier); words beyond the
        encoder's length limit are left out."""
        if not self.per_token:
            raise NextTokenError(f"{self.encoder.path}: a sequence classifier labels texts (classify), not words")
        words = words_of(text)
        ids, firsts = word_pieces(self.encoder, words)
        predicted = self.model(torch.tensor([ids])).argmax(dim=-1)[0]  # (T,)
        return [(word, self.labels[int(predicted[first])])
                for word, first in zip(words, firsts) if first is not None]


def load_classifier(folder: str | Path) -> TextClassifier:
    """A folder that `save_classifier` (or transformers' BertFor{Sequence,Token}Classification) wrote."""
    folder = Path(folder)
    model, heads, config_json = load_hf_model(folder)
    accelerate(model)
    architecture = (config_json.get("architectures") or [""])[0]
    kinds = {name: kind for kind, name in ARCHITECTURES.items()}
    if architecture not in kinds or "out.weight" not in heads:
        raise NextTokenError(f"{folder}: not a saved classifier (architectures: {architecture or 'none'}; "
                             f"expected one of {', '.join(kinds)})")
    n_labels = heads["out.weight"].shape[0]
    head = kinds[architecture](model.config, n_labels)
    missing = sorted(set(head.state_dict()) - set(heads))
    if missing:
        raise NextTokenError(f"{folder}: the {architecture} lacks {', '.join(missing)}")
    head.load_state_dict({name: heads[name] for name in head.state_dict()})
    id2label = config_json.get("id2label") or {}
    labels = [id2label.get(str(i), f"LABEL_{i}") for i in range(n_labels)]
    classifier = EncoderClassifier(model, head.eval().requires_grad_(False))
    return TextClassifier(encoder_from(folder, model, heads), classifier, labels)
