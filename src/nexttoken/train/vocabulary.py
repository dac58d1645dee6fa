"""A BERT-layout encoder's WordPiece vocabulary extended by the characters its tokenizer cannot read.

MiniLM's uncased English vocabulary reads 202 of the 2,866 distinct characters of 2,000 People's
Daily paragraphs and turns the rest into [UNK]: about two thirds of a Chinese review's tokens. With
each character the training texts use at least twice added to the vocabulary (one new embedding
row each, drawn from a normal distribution with the existing rows' mean and covariance), the
encoder can tell them apart from the first step and learn them in fine-tuning: rows all equal to
the mean (or, as transformers' resize_token_embeddings draws them, within a variance scaled by
1e-9 of it) give the new characters one indistinguishable input that a short fine-tune barely
separates. The result is a Hugging Face folder like the source (config.json with the new
vocab_size, tokenizer.json and vocab.txt with the new ids after the old ones, model.safetensors),
which nexttoken and transformers read alike."""

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import safetensors.torch
import torch

from nexttoken.errors import NextTokenError
from nexttoken.tokenizer import Tokenizer

COPIED = ("tokenizer_config.json", "special_tokens_map.json")


def unknown_characters(tokenizer: Tokenizer, texts: Iterable[str], min_count: int = 2) -> list[str]:
    """The characters of `texts`, seen at least `min_count` times, that `tokenizer` reads as [UNK]
    alone; in order of first appearance."""
    counts = Counter(char for text in texts for char in text if not char.isspace())
    unknown = []
    for char, count in counts.items():
        if count >= min_count and tokenizer.encode(char, add_bos=False, add_eos=False) == [tokenizer.unk_id]:
            unknown.append(char)
    return unknown


def new_embedding_rows(table: torch.Tensor, n_rows: int, seed: int = 0) -> torch.Tensor:
    """`n_rows` rows (n_rows, D) drawn from the normal distribution with the mean and covariance of
    `table`'s rows (V, D), in float32; the same for the same seed."""
    rows = table.float()
    mean = rows.mean(dim=0)  # (D,)
    centred = rows - mean
    covariance = centred.T @ centred / rows.shape[0]  # (D, D)
    jitter = 1e-6 * covariance.diagonal().mean() * torch.eye(covariance.shape[0])  # a rank-deficient table too
    cholesky = torch.linalg.cholesky(covariance + jitter)
    noise = torch.randn(n_rows, rows.shape[1], generator=torch.Generator().manual_seed(seed))  # (n_rows, D)
    return mean + noise @ cholesky.T


def extend_vocabulary(source: Path, new_tokens: list[str], folder: Path, seed: int = 0) -> Path:
    """Write `source` with `new_tokens` appended to its WordPiece vocabulary into `folder`, whole or
    not at all (a temporary folder renamed into place); the new embedding rows come from
    new_embedding_rows with `seed`."""
    tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    if tokenizer_json.get("model", {}).get("type") != "WordPiece":
        raise NextTokenError(f"{source}: only a WordPiece vocabulary can be extended")
    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    added = [token for token in dict.fromkeys(new_tokens) if token not in vocab]
    for token in added:
        vocab[token] = len(vocab)
    config = json.loads((source / "config.json").read_text())
    tensors = safetensors.torch.load_file(source / "model.safetensors")
    name = next((k for k in tensors if k.endswith("word_embeddings.weight")), None)
    if name is None:
        raise NextTokenError(f"{source}: no word embeddings to extend")
    table = tensors[name]
    rows = new_embedding_rows(table, len(vocab) - table.shape[0], seed).to(table.dtype)  # (added, D)
    tensors[name] = torch.cat([table, rows]).contiguous()
    config["vocab_size"] = len(vocab)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
        (staging / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.__getitem__)),
                                           encoding="utf-8")
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        safetensors.torch.save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        for file in COPIED:
            if (source / file).is_file():
                shutil.copyfile(source / file, staging / file)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
