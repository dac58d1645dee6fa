"""`nexttoken train --objective mlm`: an encoder in BERT's layout trained with masked language
modelling (Devlin et al. 2019, §3.1; masking in nexttoken.train.masking) on a shipped corpus or
your files, from scratch with a WordPiece tokenizer trained on the training split, or continued
from a BERT-layout folder (`source`, MiniLM say) with its tokenizer and a new masked-LM head tied to
its embeddings. From the first checkpoint on the run folder is a Hugging Face BertForMaskedLM folder
that `nexttoken fill --model RUN_DIR` and transformers read; metrics.jsonl holds the held-out loss
and masked-token accuracy at each evaluation.

Sequences are [CLS] + seq_len - 2 tokens of the stream + [SEP] (documents run on, separated by
[SEP], as BERT packs them); each batch's masking is drawn from a generator seeded by the run's seed
and the batch's position, so a resumed run masks exactly what an unstopped one would."""

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.loaders.safetensors import load_hf_model
from nexttoken.model.heads import MaskedLMHead
from nexttoken.model.transformer import Transformer
from nexttoken.tokenizer import Tokenizer
from nexttoken.train.corpora import check_corpus, load_corpus, text_files
from nexttoken.train.data import TokenLoader, held_out_batches
from nexttoken.train.export import write_json
from nexttoken.train.export_encoders import TOKENIZER_FILES, export_masked_lm
from nexttoken.train.initialization import init_weights
from nexttoken.train.loop import PretrainResult, TrainConfig, to_device, train
from nexttoken.train.masking import MaskedLM, MaskingConfig, mask_tokens, masked_lm_loss, maskable_positions
from nexttoken.train.objectives import IGNORE
from nexttoken.train.prepare import held_out, prepare_data, run_data_folder

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0 to 4, as BERT's vocab.txt orders them
# Continuing MiniLM (22.7M parameters, 30,522 tokens) a step costs about twice a scratch step, and
# a pretrained encoder passes the scratch run's 800-step accuracy within its first 100 steps; a
# third of the scratch rate keeps more of what it knows (docs/training.md)
CONTINUED_STEPS = 300
CONTINUED_LR = 3e-4


@dataclass(frozen=True)
class MaskedLMRecipe:
    corpus: str = "shakespeare"
    files: tuple[Path, ...] = ()  # text files or folders in place of `corpus`
    source: Path | None = None  # a BERT-layout folder to continue from; None: from scratch
    vocab_size: int = 8192  # WordPiece vocabulary trained from scratch
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 1024
    seq_len: int = 128  # [CLS] and [SEP] included
    val_fraction: float = 0.1
    eval_batches: int = 8
    seed: int = 1337
    workers: int = 2
    masking: MaskingConfig = MaskingConfig()
    # 800 steps of 32 x 128 tokens (about 480k masked ones): masked LM sits near the unigram guess
    # for its first few hundred steps, so the run is as long as ten minutes on 2 cores allow
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=800, global_batch=32, micro_batch=32, lr=1e-3, min_lr=1e-4, warmup_steps=30, weight_decay=0.01,
        betas=(0.9, 0.999), eval_every=100, checkpoint_every=100))

    def __post_init__(self) -> None:
        if self.source is None:
            sizes = {n: getattr(self, n) for n in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff")}
            wrong = [f"{name} {size}" for name, size in sizes.items() if size < 1]
            if wrong or self.d_model % max(self.n_head, 1):
                raise NextTokenError(f"sizes must be positive and d_model a multiple of n_head, got {sizes}")
        if self.seq_len < 8:
            raise NextTokenError(f"seq_len must be at least 8, got {self.seq_len}")
        if not self.files:
            check_corpus(self.corpus)


def bert_model_config(recipe: MaskedLMRecipe, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=recipe.d_model, n_layer=recipe.n_layer, n_head=recipe.n_head,
                       d_ff=recipe.d_ff, max_seq_len=recipe.seq_len, norm_eps=1e-12, causal=False, norm="layer",
                       pre_norm=False, mlp="gelu", positions="learned", bias=True, type_vocab_size=2,
                       embed_norm=True)


def train_wordpiece(texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    """An uncased WordPiece tokenizer as BERT's (normaliser, pre-tokenizer, ## continuations,
    [CLS] text [SEP]) trained on `texts`."""
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    backend.train_from_iterator(texts, trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return backend


def save_wordpiece(backend: tokenizers.Tokenizer, folder: Path, max_length: int) -> None:
    """tokenizer.json, vocab.txt and the config transformers' BertTokenizer reads."""
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    vocab = backend.get_vocab()
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.__getitem__)), encoding="utf-8")
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_max_length": max_length})


def prepare_masked_data(recipe: MaskedLMRecipe, folder: Path) -> None:
    """The corpus tokenised into train/val shards under `folder`, documents separated by [SEP], with
    the tokenizer files beside them (trained on the training documents, or the source's)."""
    texts = text_files(list(recipe.files)) if recipe.files else load_corpus(recipe.corpus)
    if recipe.source is not None:
        backend = Tokenizer.from_hf_folder(recipe.source).backend
        folder.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (recipe.source / name).is_file():
                (folder / name).write_bytes((recipe.source / name).read_bytes())
    else:
        is_val = held_out(len(texts), recipe.val_fraction)
        backend = train_wordpiece([t for t, v in zip(texts, is_val) if not v], recipe.vocab_size)
        save_wordpiece(backend, folder, recipe.seq_len)
    prepare_data(texts, backend, "[SEP]", folder, recipe.val_fraction, recipe.workers)


class MaskedBatches:
    """Endless micro-batches {"input_ids", "labels"} (B, seq_len) of masked windows of a split,
    resumable exactly (see the module docstring)."""

    def __init__(self, folder: Path, split: str, micro_batch: int, recipe: MaskedLMRecipe, tokenizer: Tokenizer,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.windows = TokenLoader(folder, split, micro_batch, recipe.seq_len - 2, recipe.seed, rank, world_size,
                                   shuffle)
        self.tokenizer, self.masking, self.seed, self.rank = tokenizer, recipe.masking, recipe.seed, rank

    def __iter__(self) -> "MaskedBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        position = self.windows.consumed + self.rank  # this micro-batch's place in the run's sequence
        tokens = next(self.windows)["input_ids"]  # (B, seq_len - 2)
        B = tokens.shape[0]
        ids = torch.cat([torch.full((B, 1), self.tokenizer.bos_id), tokens,
                         torch.full((B, 1), self.tokenizer.eos_id)], dim=1)  # (B, seq_len)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        inputs, labels = mask_tokens(ids, maskable_positions(ids, self.tokenizer), self.tokenizer.mask_id,
                                     self.tokenizer.vocab_size, generator, self.masking)
        return {"input_ids": inputs, "labels": labels}

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)


@torch.no_grad()
def masked_accuracy(batches: list[dict[str, torch.Tensor]], model: nn.Module) -> dict[str, float]:
    """Share of held-out masked tokens whose highest score is the original token."""
    device = next(model.parameters()).device
    model.eval()
    right = total = 0
    for batch in map(lambda b: to_device(b, device), batches):
        chosen = batch["labels"] != IGNORE
        scores = model(batch["input_ids"], positions=chosen)  # (N, V)
        right += int((scores.argmax(dim=-1) == batch["labels"][chosen]).sum())
        total += int(chosen.sum())
    return {"eval_masked_accuracy": right / max(total, 1)}


def new_encoder(recipe: MaskedLMRecipe, tokenizer: Tokenizer) -> MaskedLM:
    """From scratch (GPT-2's initialisation, as `nexttoken train`), or the source folder's encoder
    with its masked-LM head when it has one, else a new one."""
    torch.manual_seed(recipe.seed)
    if recipe.source is None:
        config = bert_model_config(recipe, tokenizer.vocab_size)
        return init_weights(MaskedLM(Transformer(config), MaskedLMHead(config)), recipe.n_layer)
    encoder, heads, _ = load_hf_model(recipe.source)
    if encoder.config.causal:
        raise NextTokenError(f"{recipe.source}: a decoder (causal attention), not an encoder to train with masked LM")
    if recipe.seq_len > encoder.config.max_seq_len:
        raise NextTokenError(f"seq_len {recipe.seq_len} is longer than {recipe.source}'s "
                             f"{encoder.config.max_seq_len} positions")
    head = MaskedLMHead(encoder.config)
    if "mlm.bias" in heads:
        head.load_state_dict({name.removeprefix("mlm."): t for name, t in heads.items() if name.startswith("mlm.")})
    else:
        nn.init.normal_(head.dense.weight, std=0.02)
        nn.init.zeros_(head.dense.bias)
    return MaskedLM(encoder.requires_grad_(True), head)


def check_source(source: Path | None) -> None:
    """A --from folder that is not a BERT-layout encoder fails before the corpus is prepared."""
    if source is None:
        return
    from nexttoken.loaders.safetensors import read_config

    model_type = read_config(source).get("model_type")
    if model_type != "bert":
        raise NextTokenError(f"{source}: a '{model_type}' model, not an encoder in BERT's layout "
                             "(--from takes a BERT or MiniLM folder)")


def run_masked_lm(recipe: MaskedLMRecipe, run_dir: str | Path, resume: bool = False) -> PretrainResult:
    """Prepare the data (unless RUN_DIR/data holds it), train, and keep the run folder a
    BertForMaskedLM folder of the latest checkpoint."""
    run_dir = Path(run_dir)
    check_source(recipe.source)
    folder = run_data_folder(run_dir, resume, partial(prepare_masked_data, recipe))
    tokenizer = Tokenizer.from_hf_folder(folder)
    if tokenizer.mask_id is None or tokenizer.bos_id is None:
        raise NextTokenError(f"{folder}: the tokenizer has no [MASK] or [CLS]")
    model = new_encoder(recipe, tokenizer)
    micro = recipe.train.micro_batch
    data = MaskedBatches(folder, "train", micro, recipe, tokenizer)
    val_stream = MaskedBatches(folder, "val", micro, recipe, tokenizer, shuffle=False)
    val = held_out_batches(val_stream, val_stream.windows, recipe.eval_batches, folder)
    pad_id = tokenizer.pad_id or 0

    def export(weights: dict[str, torch.Tensor]) -> None:
        model_copy = MaskedLM(Transformer(model.encoder.config), MaskedLMHead(model.encoder.config))
        model_copy.load_state_dict(weights)
        export_masked_lm(model_copy.encoder, model_copy.head, pad_id, folder, run_dir)

    result = train(model, data, masked_lm_loss, recipe.train, run_dir, eval_data=val, resume=resume,
                   on_checkpoint=export, eval_metrics=lambda m: masked_accuracy(val, m))
    return PretrainResult(run_dir, result, sum(p.numel() for p in model.parameters()))
