"""One process or many: the same training command runs alone or under torchrun, which sets RANK,
WORLD_SIZE and LOCAL_RANK (and the rendezvous address) for each process it starts.

Gradients are averaged by DistributedDataParallel (Li et al., 2020), or parameters, gradients and
optimiser state are sharded by FSDP2 (`fully_shard` on each block, then on the root, as the PyTorch
FSDP2 tutorial does). gloo carries the collectives on CPU, NCCL on GPUs."""

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from nexttoken.errors import NextTokenError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: str = "auto") -> Process:
    """This process's place in the run: joins the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(where)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=where if cuda else None)
    return Process(int(os.environ.get("RANK", "0")), world_size, where)


def wait_for_others(process: Process) -> None:
    """Block until every process gets here. The processes of a finished run leave the group
    together: now and then gloo aborted a rank that tore down its connections while rank 0 was
    still exporting (SIGABRT, "terminate called without an active exception")."""
    if process.distributed:
        dist.barrier()


def stop(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, process: Process, strategy: str) -> nn.Module:
    """The model as this process trains it: itself alone, else under DDP or sharded by FSDP2
    (`strategy`, one of STRATEGIES, as TrainConfig checks)."""
    if not process.distributed:
        return model
    if strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[process.device] if process.device.type == "cuda" else None)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise NextTokenError("FSDP2 shards a model block by block; this model has no `blocks`")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)  # the root: embeddings, final norm and head, one unit
    return model


def gradient_sync(model: nn.Module, enabled: bool) -> AbstractContextManager:
    """Within it, backward passes only accumulate gradients locally, unless `enabled`: under gradient
    accumulation only the last micro-batch of a step needs to communicate."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def sum_across(value: torch.Tensor, process: Process) -> torch.Tensor:
    """The sum of `value` over all processes (itself when alone)."""
    if process.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_objects(value: object, process: Process) -> list:
    """Every process's `value`, by rank."""
    if not process.distributed:
        return [value]
    values = [None] * process.world_size
    dist.all_gather_object(values, value)
    return values


FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, under our parameter names (no "module." prefix); with
    FSDP2 every rank takes part and rank 0 receives them."""
    return get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state keyed by parameter name (not position), gathered as `full_model_state`."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_full_states(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor],
                     optimizer_state: dict) -> None:
    """Load whole states read from a checkpoint, each rank keeping its shard under FSDP2."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
