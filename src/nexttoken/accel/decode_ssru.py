"""The decode step of Marian's tiny translation decoders (post-norm blocks of an SSRU, cross-attention
and a ReLU MLP, every product an Int8RowLinear) through all its blocks in one kernel call
(decode_ssru.cpp), as decode_blocks.py does for Llama's blocks: called one by one, a step's 70-odd
operators cost far more than its products. The SSRU's state update runs in the same call as the
products, and the cross-attention reads the source's keys and values that binding the source
computed once (model.encoder_decoder.SourceBound).

`one_call_hidden_states` gives the decoder's `hidden_states` with the blocks of the steps the kernel
`takes` (eager, float32, one new token per row, no padding in the decoder's cache, a float32 cache)
in one call, for a decoder of sinusoidal positions (Marian's); other steps run the reference ones."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nexttoken.accel import kernels
from nexttoken.accel.int8_rows import Int8RowLinear
from nexttoken.model.attention import CrossAttention
from nexttoken.model.kv_cache import CrossKVCache
from nexttoken.model.layers import MLP
from nexttoken.model.ssru import SSRU
from nexttoken.model.transformer import Transformer


def fits(block: nn.Module) -> bool:
    """Whether the kernel can run `block` (a transformer.DecoderBlock): post-norm LayerNorms, an SSRU,
    cross-attention with heads of a size the kernel is built for, a ReLU MLP, every product an
    Int8RowLinear (the SSRU's without a bias, the others with one)."""
    if not (isinstance(block.attn, SSRU) and isinstance(getattr(block, "cross_attn", None), CrossAttention)
            and isinstance(block.mlp, MLP) and not block.pre_norm):
        return False
    cross, mlp = block.cross_attn, block.mlp
    biased = (cross.wq, cross.wo, mlp.w_up, mlp.w_down)
    norms = (block.attn_norm, block.cross_norm, block.mlp_norm)
    return (isinstance(block.attn.w, Int8RowLinear) and block.attn.w.bias is None
            and all(isinstance(p, Int8RowLinear) and p.bias is not None for p in biased)
            and all(isinstance(n, nn.LayerNorm) and n.bias is not None and n.weight.dtype == torch.float32
                    for n in norms)
            and mlp.act is F.relu and cross.scale is None and cross.head_dim in kernels.ATTENTION_HEAD_SIZES
            and cross.n_head // cross.n_kv_head <= kernels.ONE_QUERY_MAX_GROUP)


def block_tensors(block: nn.Module) -> list[torch.Tensor]:
    """A block's tensors in the order the kernel reads them (decode_ssru.cpp's block_of)."""
    cross, mlp = block.cross_attn, block.mlp

    def product(p: Int8RowLinear) -> list[torch.Tensor]:
        return [p.blocks, p.scales, p.bias]

    return [block.attn.w.blocks, block.attn.w.scales, block.attn.forget_bias,
            block.attn_norm.weight, block.attn_norm.bias, *product(cross.wq), *product(cross.wo),
            block.cross_norm.weight, block.cross_norm.bias, *product(mlp.w_up), *product(mlp.w_down),
            block.mlp_norm.weight, block.mlp_norm.bias]


def takes(cache: CrossKVCache | None) -> bool:
    """A float32 cross-attention cache with no padding of its own, nothing to differentiate, and
    torch.compile not tracing."""
    return (isinstance(cache, CrossKVCache) and cache.dtype == torch.float32 and not cache.padded
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling())


@dataclass(frozen=True)
class OneCallHiddenStates:
    """`model.hidden_states` (of an encoder-decoder's decoder), with the blocks of the steps the
    kernel `takes` in one call."""

    model: Transformer
    tensors: list[torch.Tensor]  # every block's, gathered once
    eps: float
    scale: float

    def __call__(self, ids: torch.Tensor, cache: CrossKVCache | None = None, mask: torch.Tensor | None = None,
                 last_only: bool = False, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None and attention_mask is None and ids.shape[1] == 1 and takes(cache):
            return self.step(ids, cache)
        return self.model.hidden_states(ids, cache, mask, last_only, attention_mask)

    def step(self, ids: torch.Tensor, cache: CrossKVCache) -> torch.Tensor:
        """(B, 1) ids -> (B, 1, d_model): every row at the cache's length, as no row is padded, so the
        kernel embeds them from the table and one row of positions (Transformer.block_inputs computes
        them for any padding), then runs the blocks. The cache's key mask needs no update: it is
        True wherever no padding was recorded."""
        model, position = self.model, cache.length
        if position + 1 > min(model.config.max_seq_len, cache.capacity):
            return model.hidden_states(ids, cache)  # which raises the reference's error
        x = torch.ops.nexttoken.decode_ssru(
            ids.contiguous(), model.embed.weight, model.embed_scale, model.pos_table[position], self.tensors,
            cache.keys, cache.values, cache.cross_keys, cache.cross_values, cache.source_key_mask.contiguous(),
            position, model.config.n_head, self.eps, self.scale)
        cache.advance(1)
        return x


def one_call_hidden_states(model: Transformer) -> OneCallHiddenStates | None:
    """The decoder's hidden states with its steps' blocks in one call where every block `fits` and
    our kernels are built; else None."""
    blocks = model.blocks
    embeddings = (model.pos_table is not None and model.pos_embed is None and model.type_embed is None
                  and model.embed_norm is None and model.embed.weight.dtype == torch.float32)
    if not embeddings or model.norm is not None or not kernels.load() or not all(fits(block) for block in blocks):
        return None
    tensors = [t for block in blocks for t in block_tensors(block)]
    head_dim = blocks[0].cross_attn.head_dim
    return OneCallHiddenStates(model, tensors, blocks[0].attn_norm.eps, head_dim**-0.5)
