"""The training loop: AdamW, warmup then cosine decay, gradient accumulation and clipping, bfloat16
autocast, periodic evaluation, metrics, atomic checkpoints and exact resume, alone or under torchrun.

    from nexttoken.train.data import TokenLoader, eval_batches
    from nexttoken.train.loop import TrainConfig, train
    from nexttoken.train.objectives import next_token_loss

    torch.manual_seed(0)  # every process builds the same initial weights
    model = Transformer(config)
    data = TokenLoader("data/", "train", micro_batch=8, seq_len=256, rank=rank, world_size=world)
    val = eval_batches("data/", micro_batch=8, seq_len=256, n_batches=4, rank=rank, world_size=world)
    result = train(model, data, next_token_loss, TrainConfig(max_steps=500, global_batch=32, micro_batch=8),
                   "runs/mine", eval_data=val, tokens_per_byte=data.tokens_per_byte)

`objective(model, batch) -> (loss, n_tokens)` is any plain function (see nexttoken.train.objectives):
`loss` is the mean over the `n_tokens` targets that count, and a step's loss is the mean over every
counted target of its global batch. `data` is any iterator of dict batches of tensors with
`state_dict()` / `load_state_dict()`; the loop takes `global_batch / (micro_batch * world_size)`
batches from it per step. `model` is any nn.Module (our Transformer or a module around it);
FSDP2 shards its `blocks`. With `resume=True` the run continues from run_dir's latest checkpoint,
and reaches the same losses, bit for bit in float32, as a run that was never stopped."""

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn

from nexttoken.accel.memory import keep_freed_memory
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.train.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nexttoken.train.distributed import (
    STRATEGIES,
    Process,
    full_model_state,
    full_optimizer_state,
    gather_objects,
    gradient_sync,
    load_full_states,
    start,
    sum_across,
    wrap,
)
from nexttoken.train.metrics import (
    append_metrics,
    evaluation_metrics,
    plot_losses,
    truncate_metrics,
)
from nexttoken.train.schedule import learning_rate

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor | int]]
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000
    global_batch: int = 32  # sequences per optimiser step, summed over processes and micro-batches
    micro_batch: int = 8  # sequences per forward and backward pass of one process
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on weight matrices only, not on norms or biases (as nanoGPT)
    betas: tuple[float, float] = (0.9, 0.95)
    embedding_lr_scale: float = 1.0  # the token-embedding table's learning rate, a multiple of the schedule's
    grad_clip: float = 1.0  # the largest global gradient norm; 0: no clipping
    precision: str = "bf16"  # "bf16": bfloat16 autocast, float32 weights and optimiser; "fp32"
    fused: bool = True  # AdamW's fused kernel (one pass over all parameters)
    compile: bool = False  # torch.compile each block (the first step compiles)
    eval_every: int = 100  # steps between evaluations (and one at the end)
    checkpoint_every: int = 100  # steps between checkpoints (and one at the end); 0: only at the end
    keep_checkpoints: int = 1
    strategy: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2)
    progress: bool = True  # a progress bar on the main process

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise NextTokenError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.max_steps < 1 or self.micro_batch < 1 or self.global_batch < self.micro_batch:
            raise NextTokenError("max_steps and micro_batch must be positive and global_batch at least micro_batch")
        if not self.embedding_lr_scale > 0:
            raise NextTokenError(f"the embedding learning-rate scale must be positive, got {self.embedding_lr_scale}")
        if self.strategy not in STRATEGIES:
            raise NextTokenError(f"unknown distributed strategy '{self.strategy}' "
                                 f"(choose from {', '.join(STRATEGIES)})")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per step in each process: the global batch stays the same for any world size."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise NextTokenError(f"global batch {self.global_batch} is not a multiple of micro-batch "
                                 f"{self.micro_batch} x {world_size} processes")
        return self.global_batch // per_step


@dataclass
class TrainResult:
    step: int
    loss: float  # training loss of the last step
    tokens: int  # targets trained on, over the whole run (across resumes)
    seconds: float  # wall time of this invocation
    tokens_per_second: float  # of this invocation
    eval: dict = field(default_factory=dict)  # the last evaluation: eval_loss, perplexity, bits_per_byte
    checkpoint: Path | None = None


@dataclass
class PretrainResult:
    """A finished run of the masked-LM or span objective: its folder, what training did, the model's size."""

    run_dir: Path
    train: TrainResult
    parameters: int


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter, 2019) with weight decay on matrices only; with an
    `embedding_lr_scale` other than 1, the token-embedding tables in a group of their own whose
    "lr_scale" the loop multiplies the schedule's learning rate by."""
    tables = {id(m.embed.weight) for m in model.modules() if isinstance(m, Transformer)}
    params = [p for p in model.parameters() if p.requires_grad]
    scaled = [p for p in params if id(p) in tables] if config.embedding_lr_scale != 1.0 else []
    rest = [p for p in params if not (scaled and id(p) in tables)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    if scaled:
        groups.append({"params": scaled, "weight_decay": config.weight_decay, "lr_scale": config.embedding_lr_scale})
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=config.fused)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each of the model's blocks in place. The blocks share their code and shapes, so
    the first step compiles one graph for all of them (forward and backward), in the time one block
    takes rather than the whole model; inductor fuses the work around the matrix products (norms,
    rotations, SwiGLU, autocast's casts of the weights)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise NextTokenError("compile works block by block; this model has no `blocks`")
    for block in blocks:
        block.compile(dynamic=False)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_step(model: nn.Module, batches: list[Batch], objective: Objective, optimizer: torch.optim.Optimizer,
               config: TrainConfig, process: Process) -> tuple[float, float, int]:
    """One optimiser step over this process's micro-batches -> (global loss, gradient norm, tokens).

    Each micro-batch's loss is weighted by its token count, so that the gradient is that of the mean
    loss over every counted token of the global batch, however the batch is split."""
    autocast = torch.autocast(process.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    loss_sum = torch.zeros((), dtype=torch.float64, device=process.device)
    n_sum = torch.zeros((), dtype=torch.float64, device=process.device)
    for i, batch in enumerate(batches):
        with gradient_sync(model, enabled=i == len(batches) - 1):
            with autocast:
                loss, n_tokens = objective(model, batch)
            n_tokens = torch.as_tensor(n_tokens, device=process.device)
            (loss * n_tokens).backward()
        loss_sum += loss.detach().double() * n_tokens
        n_sum += n_tokens
    loss_sum, n_sum = sum_across(torch.stack([loss_sum, n_sum]), process)
    # DDP and FSDP2 average gradients over processes; undo that and divide by the global count instead
    scale = process.world_size / max(n_sum.item(), 1.0)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):  # FSDP2 gives a DTensor
        norm = norm.full_tensor()
    norm = norm.item() * scale
    clip = min(1.0, config.grad_clip / (norm + 1e-6)) if config.grad_clip > 0 else 1.0
    torch._foreach_mul_(grads, scale * clip)  # the mean and the clipping in one pass over the gradients
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return (loss_sum / n_sum.clamp(min=1)).item(), norm, int(n_sum.item())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], objective: Objective, config: TrainConfig,
             process: Process) -> float:
    """The mean loss per counted token over every process's evaluation batches."""
    autocast = torch.autocast(process.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=process.device)
    for batch in batches:
        with autocast:
            loss, n_tokens = objective(model, to_device(batch, process.device))
        totals += torch.stack([loss.double() * n_tokens, torch.as_tensor(n_tokens, device=process.device).double()])
    model.train()
    loss_sum, n_sum = sum_across(totals, process)
    return (loss_sum / n_sum.clamp(min=1)).item()


def refuse_to_replace(run_dir: Path) -> None:
    """A new run in the folder of an earlier one would replace its checkpoints (and metrics)."""
    path = latest_checkpoint(run_dir)
    if path is not None:
        raise NextTokenError(f"{run_dir} already holds a run (checkpoint {path.name}): train into another "
                             f"folder, or resume that run")


def resume_from(run_dir: Path, model: nn.Module, config: TrainConfig, process: Process) -> Checkpoint | None:
    """The latest checkpoint in run_dir, checked against this run (None: a run stopped before its first
    checkpoint starts again). The main process says which, and which settings differ from the saved run's."""
    path = latest_checkpoint(run_dir)
    seen = gather_objects(None if path is None else path.name, process)
    if len(set(seen)) > 1:  # else the processes would start at different steps, and wait for each other forever
        raise NextTokenError(f"the processes see different checkpoints in {run_dir} ("
                             + ", ".join(f"rank {rank}: {name or 'none'}" for rank, name in enumerate(seen))
                             + "): every node must see the same run folder")
    if path is None:
        if process.is_main:
            print(f"no checkpoint in {run_dir} yet: starting at step 0", file=sys.stderr)
        return None
    saved = load_checkpoint(path)
    if saved.state["world_size"] != process.world_size:
        raise NextTokenError(f"{path} was saved by {saved.state['world_size']} processes; resume it "
                             f"with as many, not {process.world_size}")
    check_same_shapes(model.state_dict(), saved.model, path)
    if process.is_main:
        before, now = saved.state["config"], json.loads(json.dumps(asdict(config)))  # tuples as JSON lists
        changed = [f"{name} {before[name]} -> {value}" for name, value in now.items()
                   if name != "progress" and before.get(name, value) != value]
        print(f"resuming from step {saved.state['step']} ({path})"
              + (f"; changed since: {', '.join(changed)}" if changed else ""), file=sys.stderr)
    return saved


def check_same_shapes(ours: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], path: Path) -> None:
    """A checkpoint of another model is a one-line error, not load_state_dict's list of mismatches."""
    for name in sorted(ours.keys() | saved.keys()):
        if name not in saved or name not in ours:
            where = "this model" if name in ours else "the checkpoint"
            raise NextTokenError(f"{path} was saved from another model: only {where} has {name}")
        if ours[name].shape != saved[name].shape:
            raise NextTokenError(f"{path} was saved from a model of another shape: {name} is "
                                 f"{list(saved[name].shape)} there, {list(ours[name].shape)} here; "
                                 f"resume with the sizes it was trained with")


def progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)


def train(model: nn.Module, data: Iterator[Batch], objective: Objective, config: TrainConfig,
          run_dir: str | Path, eval_data: Iterable[Batch] | None = None, tokens_per_byte: float | None = None,
          resume: bool = False, process: Process | None = None,
          on_checkpoint: Callable[[dict[str, torch.Tensor]], None] | None = None,
          eval_metrics: Callable[[nn.Module], dict[str, float]] | None = None) -> TrainResult:
    """Train `model` in place (see the module docstring); only the main process writes to `run_dir`:
    metrics.jsonl, loss.png and checkpoints/. After each checkpoint the main process calls
    `on_checkpoint(weights)` with the whole model's weights on the CPU. At each evaluation,
    `eval_metrics(model)` adds held-out figures of its own (a masked-token accuracy, an F1) to the
    record; it runs in every process."""
    process = process or start()
    keep_freed_memory()
    run_dir = Path(run_dir)
    accumulation = config.accumulation(process.world_size)
    if config.compile:
        compile_blocks(model)
    if resume:
        saved = resume_from(run_dir, model, config, process)
    else:
        refuse_to_replace(run_dir)
        saved = None
    model = wrap(model.to(process.device), process, config.strategy)
    optimizer = make_optimizer(model, config)
    step, tokens = 0, 0
    if saved is not None:
        load_full_states(model, optimizer, saved.model, saved.optimizer)
        step, tokens = saved.state["step"], saved.state["tokens"]
        data.load_state_dict(saved.state["data"][process.rank])
        set_rng_state(saved.state["rng"][process.rank])
    if process.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(run_dir, step)  # a resumed run logs again the steps after its checkpoint
    model.train()
    result = TrainResult(step, float("nan"), tokens, 0.0, 0.0)
    began, start_tokens = time.perf_counter(), tokens
    with progress_bar(config.progress and process.is_main) as bar:
        task = bar.add_task("train", total=config.max_steps, completed=step, status="")
        while step < config.max_steps:
            lr = learning_rate(step, config.lr, config.min_lr, config.warmup_steps, config.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batches = [to_device(next(data), process.device) for _ in range(accumulation)]
            loss, norm, n_tokens = train_step(model, batches, objective, optimizer, config, process)
            step, tokens = step + 1, tokens + n_tokens
            elapsed = time.perf_counter() - began
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens,
                      "tokens_per_s": (tokens - start_tokens) / elapsed, "elapsed_s": elapsed}
            last = step == config.max_steps
            if eval_data is not None and (step % config.eval_every == 0 or last):
                record |= evaluation_metrics(evaluate(model, eval_data, objective, config, process), tokens_per_byte)
                if eval_metrics is not None:
                    with torch.no_grad():
                        record |= eval_metrics(model)
                    model.train()
                result.eval = {k: v for k, v in record.items() if k.startswith("eval_") or k in ("perplexity", "bits_per_byte")}
            if process.is_main:
                append_metrics(run_dir, record)
            if last or (config.checkpoint_every and step % config.checkpoint_every == 0):
                result.checkpoint = checkpoint(run_dir, step, tokens, model, optimizer, data, config, process,
                                               on_checkpoint)
            status = f"loss {loss:.3f}  {record['tokens_per_s']:,.0f} tok/s"
            if "eval_loss" in record:
                status += f"  eval {record['eval_loss']:.3f}"
            bar.update(task, completed=step, status=status)
            result.loss = loss
    seconds = time.perf_counter() - began
    result.step, result.tokens, result.seconds = step, tokens, seconds
    result.tokens_per_second = (tokens - start_tokens) / max(seconds, 1e-9)
    if process.is_main:
        plot_losses(run_dir)
    return result


def checkpoint(run_dir: Path, step: int, tokens: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               data: Iterator[Batch], config: TrainConfig, process: Process,
               on_checkpoint: Callable[[dict[str, torch.Tensor]], None] | None) -> Path | None:
    """Every process contributes its shard of the states, its data position and its generators;
    the main process writes the checkpoint."""
    model_state = full_model_state(model)
    optimizer_state = full_optimizer_state(model, optimizer)
    data_states = gather_objects(data.state_dict(), process)
    rngs = gather_objects(rng_state(), process)
    if not process.is_main:
        return None
    state = {"step": step, "tokens": tokens, "data": data_states, "rng": rngs, "world_size": process.world_size,
             "config": asdict(config)}
    path = save_checkpoint(run_dir, step, model_state, optimizer_state, state, keep=config.keep_checkpoints)
    if on_checkpoint is not None:
        on_checkpoint(model_state)
    return path
