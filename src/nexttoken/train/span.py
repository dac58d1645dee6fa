"""`nexttoken train --objective span`: a T5-style encoder-decoder (T5 v1.0's layout: relative position
biases, RMS norms, ReLU MLP, head tied to the embeddings) pretrained from scratch with span
corruption (Raffel et al. 2020 §3.1.4; nexttoken.train.noising) on a shipped corpus or your files.
The tokenizer is a SentencePiece-style BPE trained on the training split, with
<pad> </s> <unk> first and the sentinels <extra_id_0> ... counted down from the top of the
vocabulary. From the first checkpoint on the run folder is a Hugging Face T5ForConditionalGeneration
folder: `nexttoken seq2seq RUN_DIR "text with <extra_id_0> in it"` fills the spans.

Each training row is a window of seq_len tokens of the stream, corrupted with a random.Random
seeded by the run's seed and the window's place in the run, so a resumed run corrupts exactly what
an unstopped one would. A window's length fixes how many tokens and spans are masked, so every
row of a batch has the same input and target lengths."""

import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import tokenizers
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.model.encoder_decoder import EncoderDecoder
from nexttoken.train.corpora import check_corpus, load_corpus, text_files
from nexttoken.train.data import TokenLoader, held_out_batches
from nexttoken.train.export import write_json
from nexttoken.train.export_encoders import export_t5
from nexttoken.train.loop import PretrainResult, TrainConfig, train
from nexttoken.train.noising import sentinel_id, span_corruption
from nexttoken.train.objectives import IGNORE
from nexttoken.train.prepare import held_out, prepare_data, run_data_folder

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as T5's tokenizer


@dataclass(frozen=True)
class SpanRecipe:
    corpus: str = "shakespeare"
    files: tuple[Path, ...] = ()
    vocab_size: int = 8192  # the BPE vocabulary and the sentinels together
    n_sentinels: int = 100  # <extra_id_0> ... <extra_id_99>, as T5
    d_model: int = 256
    n_layer: int = 4  # decoder blocks; the encoder has as many
    n_head: int = 4
    d_ff: int = 1024
    seq_len: int = 128  # tokens of text per row, before corruption
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    val_fraction: float = 0.1
    eval_batches: int = 8
    seed: int = 1337
    workers: int = 2
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=600, global_batch=32, micro_batch=32, lr=1e-3, min_lr=1e-4, warmup_steps=30, weight_decay=0.01,
        betas=(0.9, 0.999), eval_every=100, checkpoint_every=100))

    def __post_init__(self) -> None:
        sizes = {n: getattr(self, n) for n in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff")}
        if min(sizes.values()) < 1 or self.d_model % self.n_head:
            raise NextTokenError(f"sizes must be positive and d_model a multiple of n_head, got {sizes}")
        if self.seq_len < 4 or not 0 < self.noise_density < 1 or self.mean_span_length < 1:
            raise NextTokenError("span corruption needs seq_len >= 4, 0 < noise density < 1 and mean span length >= 1")
        spans = round(max(round(self.seq_len * self.noise_density), 1) / self.mean_span_length)
        if spans > self.n_sentinels or self.vocab_size <= self.n_sentinels + 3:
            raise NextTokenError(f"{self.n_sentinels} sentinels are too few for the {spans} spans of a row, or "
                                 f"leave no room in a vocabulary of {self.vocab_size}")
        if not self.files:
            check_corpus(self.corpus)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head,
                           d_ff=self.d_ff, max_seq_len=512, norm_eps=1e-6, norm="rms", mlp="relu",
                           positions="relative", scale_attention=False, tie_embeddings=True,
                           head_scale=self.d_model**-0.5, n_encoder_layer=self.n_layer)


def train_sentencepiece_bpe(texts: list[str], vocab_size: int, n_sentinels: int) -> tokenizers.Tokenizer:
    """A SentencePiece-style BPE tokenizer (NFKC, "▁" for spaces) of vocab_size - n_sentinels pieces,
    then the sentinels <extra_id_{n-1}> ... <extra_id_0> on top, and "text </s>" on encode. (T5's
    SentencePiece model is a Unigram one; `tokenizers`' Unigram trainer takes minutes on a corpus
    BPE learns in seconds.) The sentinels are not special, so decoded text shows where each span goes.

    Typed text reads as training shows it: a sentinel takes the space before it, and the text after
    a sentinel starts no new "▁" of its own, so "not to <extra_id_0> the" is ▁not ▁to <extra_id_0>
    ▁the, where a bare ▁ before the sentinel would be a token the model never saw in its inputs."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_sentinels, special_tokens=[PAD, EOS, UNK],
                                  show_progress=False)
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens([AddedToken(f"<extra_id_{k}>", normalized=False, special=False, lstrip=True)
                        for k in reversed(range(n_sentinels))])
    backend.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B:1 {EOS}:1",
                                                           special_tokens=[(EOS, backend.token_to_id(EOS))])
    return backend


def prepare_span_data(recipe: SpanRecipe, folder: Path) -> None:
    texts = text_files(list(recipe.files)) if recipe.files else load_corpus(recipe.corpus)
    is_val = held_out(len(texts), recipe.val_fraction)
    backend = train_sentencepiece_bpe([t for t, v in zip(texts, is_val) if not v], recipe.vocab_size, recipe.n_sentinels)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": PAD, "eos_token": EOS, "unk_token": UNK,
        "extra_ids": recipe.n_sentinels, "model_max_length": 512})
    prepare_data(texts, backend, EOS, folder, recipe.val_fraction, recipe.workers)  # writes tokenizer.json


class SpanBatches:
    """Endless micro-batches of corrupted windows: "input_ids" (B, S), "decoder_input_ids" (B, T)
    (the targets shifted right behind <pad>, T5's decoder start) and "labels" (B, T)."""

    def __init__(self, folder: Path, split: str, micro_batch: int, recipe: SpanRecipe, vocab_size: int,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.windows = TokenLoader(folder, split, micro_batch, recipe.seq_len, recipe.seed, rank, world_size, shuffle)
        self.recipe, self.vocab_size, self.rank = recipe, vocab_size, rank

    def __iter__(self) -> "SpanBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        position = (self.windows.consumed + self.rank) * self.windows.micro_batch
        rows = next(self.windows)["input_ids"].tolist()
        examples = [span_corruption(row, self.vocab_size, random.Random(self.recipe.seed * 1_000_003 + position + i),
                                    self.recipe.noise_density, self.recipe.mean_span_length, eos_id=1)
                    for i, row in enumerate(rows)]
        targets = torch.tensor([e.targets for e in examples])  # (B, T)
        return {"input_ids": torch.tensor([e.inputs for e in examples]),
                "decoder_input_ids": F.pad(targets[:, :-1], (1, 0), value=0), "labels": targets}

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)


class Seq2SeqLM(nn.Module):
    """An EncoderDecoder under teacher forcing: the loop's objectives call the module itself."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        return self.model(source_ids, target_ids)  # (B, T, V)


def seq2seq_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the decoder's scores against the targets. batch: "input_ids" (B, S),
    "decoder_input_ids" (B, T), "labels" (B, T)."""
    logits = model(batch["input_ids"], batch["decoder_input_ids"])  # (B, T, V)
    labels = batch["labels"]
    n_tokens = (labels != IGNORE).sum()
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / n_tokens.clamp(min=1), n_tokens


@torch.no_grad()
def init_t5(model: EncoderDecoder) -> EncoderDecoder:
    """T5's initialisation (Mesh TensorFlow's, as transformers' T5PreTrainedModel): unit-variance
    embeddings; each projection normal with std 1/sqrt(fan-in), the queries 1/sqrt(d_model * d_kv),
    which stands in for the attention's missing 1/sqrt(d_kv); norms at one."""
    config = model.config
    query_rows = config.n_head * config.head_dim
    for name, param in model.named_parameters():
        if param.dim() < 2:
            param.fill_(1.0)
        elif name.endswith("embed.weight") and "rel_bias" not in name:
            param.normal_(0.0, 1.0)
        elif "rel_bias" in name:
            param.normal_(0.0, config.d_model**-0.5)
        else:
            param.normal_(0.0, param.shape[1] ** -0.5)
            if name.endswith("wqkv.weight") or name.endswith("cross_attn.wq.weight"):
                param[:query_rows].normal_(0.0, (config.d_model * config.head_dim) ** -0.5)
    return model


def run_span(recipe: SpanRecipe, run_dir: str | Path, resume: bool = False) -> PretrainResult:
    """Prepare the data (unless RUN_DIR/data holds it), train, and keep the run folder a
    T5ForConditionalGeneration folder of the latest checkpoint."""
    run_dir = Path(run_dir)
    folder = run_data_folder(run_dir, resume, partial(prepare_span_data, recipe))
    vocab_size = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    if sentinel_id(0, vocab_size) != tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(
            "<extra_id_0>"):
        raise NextTokenError(f"{folder}: <extra_id_0> is not the last token of the vocabulary")
    torch.manual_seed(recipe.seed)
    config = recipe.model_config(vocab_size)
    model = Seq2SeqLM(init_t5(EncoderDecoder(config)))
    micro = recipe.train.micro_batch
    data = SpanBatches(folder, "train", micro, recipe, vocab_size)
    val_stream = SpanBatches(folder, "val", micro, recipe, vocab_size, shuffle=False)
    val = held_out_batches(val_stream, val_stream.windows, recipe.eval_batches, folder)

    def export(weights: dict[str, torch.Tensor]) -> None:
        copy = Seq2SeqLM(EncoderDecoder(config))
        copy.load_state_dict(weights)
        export_t5(copy.model, 0, 1, folder, run_dir)

    result = train(model, data, seq2seq_loss, recipe.train, run_dir, eval_data=val, resume=resume, on_checkpoint=export)
    return PretrainResult(run_dir, result, sum(p.numel() for p in model.parameters()))


def expected_lengths(recipe: SpanRecipe) -> tuple[int, int]:
    """(input, target) lengths of a corrupted row, </s> included: T5's `random_spans_helper` sizes."""
    n_noise = min(max(round(recipe.seq_len * recipe.noise_density), 1), recipe.seq_len - 1)
    n_spans = min(max(round(n_noise / recipe.mean_span_length), 1), n_noise, recipe.seq_len - n_noise)
    return recipe.seq_len - n_noise + n_spans + 1, n_noise + n_spans + 1

