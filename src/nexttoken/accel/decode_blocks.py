"""A quantized model's decode step through all its blocks in one kernel call (decode_blocks.cpp).

Called one by one, a block's operators each start the threads and join them again, with Python
between them: on SmolLM2 with int4 weights, 120 products and 30 attention calls a step, that
cost more than reading the weights (docs/kernels.md). The kernel runs the same steps, so its
output is the operators' bit for bit, for models whose blocks all `fit` (Llama's, every product
in our int4 or int8 kernel; `gather`ed once), in the steps it `takes` (eager, float32, one new
token per row with no padding, a float16 cache). `one_call_step` is the decode step that calls
it: the model's own step, but for the blocks."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.accel import kernels
from nexttoken.accel.attention import kernel_scale
from nexttoken.accel.quantize import GroupLinear
from nexttoken.model.attention import Attention
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.layers import GatedMLP, RMSNorm
from nexttoken.model.transformer import Transformer


def fits(block: nn.Module) -> bool:
    """Whether the kernel can run `block` (a transformer.Block): Llama's, that is pre-norm RMSNorm,
    rotary attention over every earlier position with heads of a size the kernel is built for, the
    default scale, no per-head norms and no cross-attention, SwiGLU, no norms on sublayer outputs,
    and every product a GroupLinear in our kernel without a bias. Other blocks (Qwen 3's and Gemma 3's norms,
    sliding windows) run the reference operations."""
    attention, mlp = block.attn, block.mlp
    llama = isinstance(attention, Attention) and attention.rotary and isinstance(mlp, GatedMLP)
    if not (llama and block.pre_norm and not hasattr(block, "cross_attn")):
        return False
    plain = (attention.window == 0 and attention.q_norm is None and attention.scale is None
             and isinstance(block.attn_out_norm, nn.Identity) and isinstance(block.mlp_out_norm, nn.Identity))
    if not plain:
        return False
    products = (attention.wqkv, attention.wo, mlp.w_gate_up, mlp.w_down)
    norms = (block.attn_norm, block.mlp_norm)
    return (mlp.act is F.silu and all(isinstance(p, GroupLinear) and p.own_kernel and p.bias is None for p in products)
            and all(isinstance(n, RMSNorm) and n.weight.dtype == torch.float32 for n in norms)
            and attention.head_dim in kernels.ATTENTION_HEAD_SIZES
            and attention.n_head // attention.n_kv_head <= kernels.ONE_QUERY_MAX_GROUP)


def takes(x: torch.Tensor, cache: KVCache | None, attention_mask: torch.Tensor | None) -> bool:
    """Whether the kernel takes this step: one float32 token per row, no padding, a float16 cache,
    nothing to differentiate, and torch.compile not tracing."""
    return (x.shape[1] == 1 and cache is not None and attention_mask is None and cache.dtype == torch.float16
            and x.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.compiler.is_compiling())


@dataclass(frozen=True)
class Blocks:
    """What the kernel reads of a model's blocks, gathered once, as gathering them at every step
    cost a share of it (docs/kernels.md): each block's tensors (which keep their identity from then
    on, huge pages included; see memory.py), by kind."""

    attn_norms: list[torch.Tensor]
    qkvs: list[torch.Tensor]
    os: list[torch.Tensor]
    mlp_norms: list[torch.Tensor]
    gate_ups: list[torch.Tensor]
    downs: list[torch.Tensor]
    heads: int
    eps: float
    scale: float


def gather(blocks: nn.ModuleList) -> Blocks | None:
    """The kernel's view of `blocks` if every one `fits`, else None."""
    if not all(fits(block) for block in blocks):
        return None
    attention = blocks[0].attn
    return Blocks([b.attn_norm.weight for b in blocks], [b.attn.wqkv.packed for b in blocks],
                  [b.attn.wo.packed for b in blocks], [b.mlp_norm.weight for b in blocks],
                  [b.mlp.w_gate_up.packed for b in blocks], [b.mlp.w_down.packed for b in blocks],
                  attention.n_head, blocks[0].attn_norm.eps, kernel_scale(attention))


def decode_blocks(blocks: Blocks, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  cache: KVCache) -> torch.Tensor:
    """(B, 1, d_model) -> the last block's (B, 1, d_model) output; each block's keys and values
    for the step go into `cache` at its current length."""
    return torch.ops.nexttoken.decode_blocks(
        x.contiguous(), blocks.attn_norms, blocks.qkvs, blocks.os, blocks.mlp_norms, blocks.gate_ups, blocks.downs,
        cos, sin, cache.keys, cache.values, cache.length, blocks.heads, blocks.eps, blocks.scale)


@dataclass(frozen=True)
class OneCallStep:
    """`model.next_scores` (a transformer.DecodeStep), but for the blocks of the steps the kernel
    `takes`: those in one call. The other steps run the same operations as `model.next_scores`."""

    model: Transformer
    blocks: Blocks

    def __call__(self, ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, inputs = self.model.block_inputs(ids, cache, mask)
        cos, sin, attention_mask = inputs["global"]  # blocks that `fit` are all global
        if takes(x, cache, attention_mask):
            x = decode_blocks(self.blocks, x, cos, sin, cache)
            cache.advance(1)
        else:
            x = self.model.run_blocks(x, inputs, cache, last_only=True)
        return self.model.head(self.model.norm(x)[:, -1])  # blocks that `fit` are pre-norm: a final norm


def one_call_step(model: Transformer) -> OneCallStep | None:
    """The decode step of a model whose blocks all `fit`, with their steps in one call; else None."""
    blocks = gather(model.blocks)
    return None if blocks is None else OneCallStep(model, blocks)
