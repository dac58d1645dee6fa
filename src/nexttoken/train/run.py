"""The default training run, the one `nexttoken train` starts: a byte-level BPE tokenizer and a
small Llama-style decoder trained from scratch on a shipped corpus (Shakespeare unless told
otherwise), about ten minutes on two CPU cores. From its first checkpoint on, the run folder is a
Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json) of the latest checkpoint's
weights, which `nexttoken generate --model RUN_DIR` samples from, while the run trains and after;
beside them are its data/, checkpoints/, metrics.jsonl, loss.png and, at the end, sample.txt.

The same function runs under `torchrun --nproc_per_node N`: the main process prepares the data
while the others wait, then every process trains on its share."""

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from nexttoken.accel.accelerate import accelerate
from nexttoken.config import ModelConfig
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.config import SamplingConfig
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.pretrained import LanguageModel
from nexttoken.tokenizer.presets import chat_format
from nexttoken.tokenizer.tokenizer import Tokenizer
from nexttoken.tokenizer.training import save_tokenizer, train_bpe
from nexttoken.train.corpora import load_corpus, text_files
from nexttoken.train.data import TokenLoader, eval_batches
from nexttoken.train.distributed import (
    Process,
    full_model_state,
    gather_objects,
    start,
    stop,
    wait_for_others,
)
from nexttoken.train.export import export_hf
from nexttoken.train.initialization import init_weights
from nexttoken.train.loop import TrainConfig, TrainResult, train
from nexttoken.train.objectives import next_token_loss
from nexttoken.train.prepare import INDEX_FILE, held_out, prepare_data, read_index

TOKENIZER_FORMAT = "gpt"  # one <|endoftext|> between documents, no chat template
# what the finished run's sample.txt continues; the article's own example for the Chinese news
SAMPLE_PROMPTS = {"shakespeare": "ROMEO:", "people-daily": "中国的首都是", "python": "def "}


def sample_prompt(recipe: "Recipe") -> str:
    return "ROMEO:" if recipe.files else SAMPLE_PROMPTS.get(recipe.corpus, "ROMEO:")


@dataclass(frozen=True)
class Recipe:
    corpus: str = "shakespeare"
    files: tuple[Path, ...] = ()  # text files or folders, one document per file, in place of `corpus`
    data: Path | None = None  # a prepared data folder; None: prepare `corpus` into RUN_DIR/data
    vocab_size: int = 4096
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 704  # about 8/3 d_model, as Llama sizes its SwiGLU, rounded to a multiple of 64
    seq_len: int = 256
    val_fraction: float = 0.1  # every tenth document is held out
    eval_batches: int = 8  # micro-batches of held-out windows, over all processes
    seed: int = 1337
    workers: int = 2  # tokenising processes
    threads: int = 0  # PyTorch's intra-op threads; 0: its default (one per core)
    # 800 steps of 16 x 256 tokens: 3.3M tokens, about two passes over the training split.
    # Measured on an otherwise idle 2-core machine in bfloat16 autocast (1.5x float32): 7,130
    # tokens/s, 7 min 50 s for the whole run, and 1.97 bits per byte on held-out text.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=800, global_batch=16, micro_batch=16, lr=2e-3, min_lr=2e-4, warmup_steps=30,
        eval_every=100, checkpoint_every=100))

    def __post_init__(self) -> None:
        """Sizes a model can't have are found here, before the data is prepared."""
        sizes = {name: getattr(self, name)
                 for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "seq_len")}
        wrong = [f"{name} {size}" for name, size in sizes.items() if size < 1]
        if wrong:
            raise NextTokenError(f"sizes must be positive, got {', '.join(wrong)}")
        if self.d_model % self.n_head:
            raise NextTokenError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        try:
            self.model_config(self.vocab_size)
        except ValueError as exc:
            raise NextTokenError(f"no such model: {exc}") from None

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head,
                           d_ff=self.d_ff, max_seq_len=self.seq_len)


def recipe_with(**overrides) -> Recipe:
    """The default recipe with some fields changed, by name, whether they belong to the recipe or to
    its TrainConfig; None leaves a field as it is."""
    return with_overrides(Recipe, **overrides)


def with_overrides(kind: type, **overrides):
    """The default recipe of dataclass `kind` (this module's Recipe, or the masked-LM and span ones,
    which also hold a TrainConfig as `train`) with some fields changed, by name; None leaves a
    field as it is."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    own = {k: v for k, v in overrides.items() if k in kind.__dataclass_fields__}
    rest = {k: v for k, v in overrides.items() if k not in own}
    unknown = set(rest) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise NextTokenError(f"unknown recipe settings: {', '.join(sorted(unknown))}")
    recipe = kind(**own)
    return replace(recipe, train=replace(recipe.train, **rest))


@dataclass
class RunResult:
    run_dir: Path
    train: TrainResult
    parameters: int
    sample: str


def prepare_corpus(recipe: Recipe, folder: Path) -> None:
    """Train the tokenizer on the training documents only, then tokenise everything into shards."""
    if (folder / INDEX_FILE).exists():  # runs trained on those tokens would read other ones
        raise NextTokenError(f"{folder} already holds prepared data: prepare into another folder")
    texts = text_files(list(recipe.files)) if recipe.files else load_corpus(recipe.corpus)
    is_val = held_out(len(texts), recipe.val_fraction)
    chat = chat_format(TOKENIZER_FORMAT)
    backend = train_bpe((t for t, v in zip(texts, is_val) if not v), recipe.vocab_size, chat)
    save_tokenizer(backend, chat, folder)  # a Hugging Face tokenizer folder, the shards beside it
    prepare_data(texts, backend, chat.eos, folder, recipe.val_fraction, recipe.workers)


def data_folder(recipe: Recipe, run_dir: Path, process: Process) -> Path:
    """`recipe.data` as given, or the corpus prepared into RUN_DIR/data (unless it is there from an
    earlier run) by the main process while the others wait; every process must see it."""
    folder = recipe.data or run_dir / "data"
    if recipe.data is None and process.is_main and not (folder / INDEX_FILE).exists():
        prepare_corpus(recipe, folder)
    seen = gather_objects((folder / INDEX_FILE).exists(), process)  # the others wait here for the main one
    if not all(seen):
        if not process.distributed:
            read_index(folder)  # one line for a folder that prepare-data did not make: a typo trains nothing
        lacking = ", ".join(str(rank) for rank, found in enumerate(seen) if not found)
        raise NextTokenError(f"{folder}: no prepared data on rank {lacking} (every node must see the same folder; "
                             f"nexttoken prepare-data prepares one)")
    return folder


def sample(model: Transformer, tokenizer: Tokenizer, run_dir: Path, prompt: str, seed: int,
           max_new_tokens: int = 120) -> str:
    lm = LanguageModel(accelerate(model.eval()), tokenizer, run_dir)
    config = GenerationConfig(max_new_tokens=max_new_tokens,
                              sampling=SamplingConfig(temperature=0.8, top_k=50, seed=seed))
    return prompt + lm.generate(lm.encode(prompt), config).text


def export_weights(model_config: ModelConfig, tokenizer: Tokenizer, run_dir: Path,
                   weights: dict[str, torch.Tensor]) -> None:
    """The run folder as a Hugging Face Llama folder of its latest checkpoint: `nexttoken generate
    --model RUN_DIR` samples from a run while it trains, and from a stopped one."""
    model = Transformer(model_config)
    model.load_state_dict(weights)
    export_hf(model, tokenizer, run_dir)


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False) -> RunResult:
    """Prepare the data (when needed), train, then save the final model as a Hugging Face Llama folder."""
    run_dir = Path(run_dir)
    process = start()
    recipe.train.accumulation(process.world_size)  # a batch that doesn't split fails before the data is prepared
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    try:
        folder = data_folder(recipe, run_dir, process)
        tokenizer = Tokenizer.from_hf_folder(folder)
        torch.manual_seed(recipe.seed)  # every process draws the same initial weights
        model_config = recipe.model_config(tokenizer.vocab_size)
        model = init_weights(Transformer(model_config), recipe.n_layer)
        if process.device.type == "cpu":  # our CPU kernels, for the evaluations (they never run with gradients)
            accelerate(model)
        micro = recipe.train.micro_batch
        data = TokenLoader(folder, "train", micro, recipe.seq_len, recipe.seed, process.rank, process.world_size)
        val = eval_batches(folder, micro, recipe.seq_len, recipe.eval_batches, rank=process.rank,
                           world_size=process.world_size)
        result = train(model, data, next_token_loss, recipe.train, run_dir, eval_data=val,
                       tokens_per_byte=data.tokens_per_byte, resume=resume, process=process,
                       on_checkpoint=partial(export_weights, model_config, tokenizer, run_dir))
        weights = full_model_state(model)  # every process takes part when FSDP2 has sharded them
        final, text = Transformer(model_config), ""
        if process.is_main:
            final.load_state_dict(weights)
            text = sample(final, tokenizer, run_dir, sample_prompt(recipe), recipe.seed)
            (run_dir / "sample.txt").write_text(text + "\n")
        wait_for_others(process)  # not on failure: torchrun stops the others when one process fails
        return RunResult(run_dir, result, sum(p.numel() for p in final.parameters()), text)
    finally:
        stop(process)
