"""A quantized model's decode step through all its blocks in one kernel call (decode_blocks.cpp).

Called one by one, a block's operators each start the threads and join them again, with Python
between them: on SmolLM2 with int4 weights, 120 products and 30 attention calls a step, that
cost more than reading the weights (docs/kernels.md). The kernel runs the same steps, so its
output is the operators' bit for bit (but for GeGLU's tanh, to float32's last bits), for models
whose blocks all `fit` (Llama's and Gemma 3's, every product in our int4 or int8 kernel;
`gather`ed once), in the steps it `takes` (eager, float32, one new token per row with no padding,
a float16 cache). `one_call_step` is the decode step that calls
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
from nexttoken.model.layers import ACTIVATIONS as MLP_ACTIVATIONS
from nexttoken.model.layers import GatedMLP, RMSNorm
from nexttoken.model.transformer import AttentionInputs, Transformer


# the gated MLPs' activations the kernel computes, by the function the block calls: its code there
ACTIVATIONS = {F.silu: 0, MLP_ACTIVATIONS["gelu-tanh"]: 1}  # SwiGLU (Llama), GeGLU with tanh (Gemma 3)


def optional_norm(norm: nn.Module | None) -> bool:
    """Whether the kernel can run this place of a block's optional norms: none, or a float32 RMSNorm."""
    return norm is None or isinstance(norm, nn.Identity) or is_float32_rms_norm(norm)


def is_float32_rms_norm(norm: nn.Module) -> bool:
    return isinstance(norm, RMSNorm) and norm.weight.dtype == torch.float32


def fits(block: nn.Module) -> bool:
    """Whether the kernel can run `block` (a transformer.Block): pre-norm RMSNorm, rotary attention
    with heads of a size the kernel is built for, over every earlier position or a sliding window,
    per-head norms of queries and keys or none, no cross-attention, a gated MLP of an activation
    it computes (ACTIVATIONS), norms on the sublayers' outputs or none, and every product a
    GroupLinear in our kernel without a bias: Llama's blocks and Gemma 3's. Other blocks run the
    reference operations."""
    attention, mlp = block.attn, block.mlp
    gated = isinstance(attention, Attention) and attention.rotary and isinstance(mlp, GatedMLP)
    if not (gated and block.pre_norm and not hasattr(block, "cross_attn")):
        return False
    products = (attention.wqkv, attention.wo, mlp.w_gate_up, mlp.w_down)
    return (mlp.act in ACTIVATIONS
            and all(isinstance(p, GroupLinear) and p.own_kernel and p.bias is None for p in products)
            and is_float32_rms_norm(block.attn_norm) and is_float32_rms_norm(block.mlp_norm)
            and all(optional_norm(n) for n in (attention.q_norm, attention.k_norm, block.attn_out_norm,
                                               block.mlp_out_norm))
            and attention.head_dim in kernels.ONE_QUERY_HEAD_SIZES
            and attention.n_head // attention.n_kv_head <= kernels.ONE_QUERY_MAX_GROUP)


def takes(x: torch.Tensor, cache: KVCache | None, attention_mask: torch.Tensor | None) -> bool:
    """Whether the kernel takes this step: one float32 token per row, no padding, a float16 cache,
    nothing to differentiate, and torch.compile not tracing."""
    return (x.shape[1] == 1 and cache is not None and attention_mask is None and not cache.padded
            and cache.dtype == torch.float16 and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


@dataclass(frozen=True)
class Blocks:
    """What the kernel reads of a model's blocks, gathered once, as gathering them at every step
    cost a share of it (docs/kernels.md): each block's tensors (which keep their identity from then
    on, huge pages included; see memory.py), by kind; each optional kind of norm empty where the
    blocks have none."""

    attn_norms: list[torch.Tensor]
    qkvs: list[torch.Tensor]
    os: list[torch.Tensor]
    mlp_norms: list[torch.Tensor]
    gate_ups: list[torch.Tensor]
    downs: list[torch.Tensor]
    q_norms: list[torch.Tensor]
    k_norms: list[torch.Tensor]
    attn_out_norms: list[torch.Tensor]
    mlp_out_norms: list[torch.Tensor]
    sliding: list[int]  # 1 where a block attends over a sliding window (its cache a ring)
    heads: int
    eps: float
    scale: float
    activation: int


def norm_weights(norms: list[nn.Module | None]) -> list[torch.Tensor] | None:
    """The blocks' weights of one optional kind of norm: all, none ([]), or None where some blocks
    have it and others not (the kernel takes all or none)."""
    present = [n for n in norms if n is not None and not isinstance(n, nn.Identity)]
    return [n.weight for n in present] if len(present) in (0, len(norms)) else None


def gather(blocks: nn.ModuleList) -> Blocks | None:
    """The kernel's view of `blocks` if every one `fits` and they agree on what the kernel takes
    once for all (heads, scale, eps, activation, which norms), else None."""
    if not all(fits(block) for block in blocks):
        return None
    first = blocks[0]
    same = all(kernel_scale(b.attn) == kernel_scale(first.attn) and b.attn.n_head == first.attn.n_head
               and b.attn_norm.eps == first.attn_norm.eps and b.mlp.act is first.mlp.act for b in blocks)
    optional = [norm_weights([getattr(b.attn, name) for b in blocks]) for name in ("q_norm", "k_norm")]
    optional += [norm_weights([getattr(b, name) for b in blocks]) for name in ("attn_out_norm", "mlp_out_norm")]
    if not same or any(weights is None for weights in optional):
        return None
    return Blocks([b.attn_norm.weight for b in blocks], [b.attn.wqkv.packed for b in blocks],
                  [b.attn.wo.packed for b in blocks], [b.mlp_norm.weight for b in blocks],
                  [b.mlp.w_gate_up.packed for b in blocks], [b.mlp.w_down.packed for b in blocks], *optional,
                  [int(b.attn.window > 0) for b in blocks], first.attn.n_head, first.attn_norm.eps,
                  kernel_scale(first.attn), ACTIVATIONS[first.mlp.act])


def decode_blocks(blocks: Blocks, x: torch.Tensor, inputs: dict[str, AttentionInputs], cache: KVCache) -> torch.Tensor:
    """(B, 1, d_model) -> the last block's (B, 1, d_model) output; each block's keys and values
    for the step go into `cache` at its current length (a sliding block's: into its ring)."""
    full = inputs.get("global") or inputs["sliding"]  # a model of one kind passes its rotations twice
    window = inputs.get("sliding") or full
    return torch.ops.nexttoken.decode_blocks(
        x.contiguous(), blocks.attn_norms, blocks.qkvs, blocks.os, blocks.mlp_norms, blocks.gate_ups, blocks.downs,
        blocks.q_norms, blocks.k_norms, blocks.attn_out_norms, blocks.mlp_out_norms, blocks.sliding, full.cos,
        full.sin, window.cos, window.sin, window.mask if "sliding" in inputs else None, cache.keys, cache.values,
        cache.length, blocks.heads, blocks.eps, blocks.scale, blocks.activation)


@dataclass(frozen=True)
class OneCallStep:
    """`model.next_scores` (a transformer.DecodeStep), but for the blocks of the steps the kernel
    `takes`: those in one call. The other steps run the same operations as `model.next_scores`."""

    model: Transformer
    blocks: Blocks

    def __call__(self, ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, inputs = self.model.block_inputs(ids, cache, mask)
        global_mask = inputs["global"].mask if "global" in inputs else None
        if takes(x, cache, global_mask):
            x = decode_blocks(self.blocks, x, inputs, cache)
            cache.advance(1)
        else:
            x = self.model.run_blocks(x, inputs, cache, last_only=True)
        return self.model.head(self.model.norm(x)[:, -1])  # blocks that `fit` are pre-norm: a final norm


def one_call_step(model: Transformer) -> OneCallStep | None:
    """The decode step of a model whose blocks all `fit`, with their steps in one call; else None."""
    blocks = gather(model.blocks)
    return None if blocks is None else OneCallStep(model, blocks)
