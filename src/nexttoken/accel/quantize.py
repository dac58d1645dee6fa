"""Weight-only quantization: a pure transform of each linear layer's weight plus a module swap
(as gpt-fast does it).

Both widths keep, for each group of 32 inputs of a row, a scale and an offset (the group's
minimum), so w ≈ minimum + q * scale, both in float16; q is in [0, 15] for int4 and [0, 255] for
int8. int4 is exactly how a GGUF Q4_1 block stores its weights, and a Q4_1 block's minimum and
maximum are always among its values, so weights loaded from Q4_1 come back exactly; int8's steps
are a seventeenth of Q4_1's, so they come back to within the float16 rounding of the scale, and
weights of any other source lose at most half of one of 255 steps across their group. One scale
per output row, symmetric, cannot hold Q4_1's groups. Every row of a product runs in our kernel
(kernels.py) with bfloat16 inputs and float32 sums, while the rest of the model keeps its dtype,
which agrees with float32 far better than a model computing wholly in bfloat16 (docs/kernels.md).

The output head keeps 8 bits in symmetric groups (Int8Head): the built-in model's table is Q8_0
in the GGUF file, a float16 scale times integers in [-127, 127] per 32 weights, which those groups
hold exactly, where float16 rounds some products of the two and reads more bytes; the head's
inputs are rounded to bfloat16, as the layers' are."""

from collections.abc import Callable

import torch
from torch import nn

from nexttoken.accel import kernels


def swap_linears(model: nn.Module, replacement: Callable[[nn.Linear], nn.Module | None]) -> nn.Module:
    """Put `replacement(layer)` in place of every nn.Linear of `model` it gives a module for;
    returns the model."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and (new := replacement(child)) is not None:
                setattr(module, name, new)
    return model


GROUP = kernels.GROUP  # inputs per scale and offset: a Q4_1 block
# without our kernel: beyond this many rows, unpacking the weight for a bfloat16 matrix product is
# faster than PyTorch's int4 kernel (docs/kernels.md)
PYTORCH_INT4_KERNEL_MAX_ROWS = 16
# our kernel, from this many rows on (a prompt), unpacks a few blocks of weights at a time to bfloat16
# and multiplies every row by them, as fast as PyTorch's bfloat16 product on a resident unpacked
# weight; fewer rows (decode steps) convert the weights in registers, keeping them exact, for every
# tile of 8 rows (benchmarks/bench_prompt_products.py, docs/kernels.md)
UNPACKED_MIN_ROWS = 64


def quantize_groups(weight: torch.Tensor, bits: int = 4,
                    symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (out, in) int32 values in [0, 2^bits - 1], and (out, in / 32)
    scales and minimums, float16 values as the kernel keeps them, with w ≈ minimum + q * scale.
    The grid spans each group's minimum to its maximum, or, `symmetric`, -2^(bits-1) to
    2^(bits-1) - 1 steps of max |w| / (2^(bits-1) - 1): a GGUF Q8_0 block (a float16 scale times
    integers of magnitude up to 127, one of them 127) comes back exactly in 8 bits."""
    levels = 2**bits - 1
    out_features, in_features = weight.shape
    groups = weight.float().view(out_features, in_features // GROUP, GROUP)  # (N, K/G, G)
    if symmetric:
        half = 2 ** (bits - 1)
        scale = (groups.abs().amax(dim=-1) / (half - 1)).half().float().clamp(min=2**-24)
        low = -half * scale  # exact: a power of two times a float16
    else:
        low, high = groups.amin(dim=-1).half().float(), groups.amax(dim=-1)  # (N, K/G)
        scale = ((high - low) / levels).half().float().clamp(min=2**-24)  # float16's smallest step
    q = ((groups - low.unsqueeze(-1)) / scale.unsqueeze(-1)).round().clamp(0, levels).to(torch.int32)
    return q.view(out_features, in_features), scale, low


def groups_fit(weight: torch.Tensor) -> bool:
    """The group kernels want whole groups of inputs and outputs in multiples of 16."""
    out_features, in_features = weight.shape
    return in_features % GROUP == 0 and out_features % kernels.BLOCK_ROWS == 0


class GroupLinear(nn.Module):
    """y = x @ w^T (+ b) with w kept as `bits`-bit values and a float16 scale and minimum per group
    of inputs, and the bias, if any, in float32. Every row goes through our kernel (kernels.py),
    which reads the packed weight and takes x in float32 or bfloat16, rounding it to bfloat16; from
    `unpacked_min_rows` rows on it rounds the weights to bfloat16 too, a few blocks at a time. Where
    that kernel cannot be built, through a bfloat16 matrix product on the weight unpacked for the call."""

    bits: int  # of each value, set by each width
    unpacked_min_rows = UNPACKED_MIN_ROWS

    def __init__(self, weight: torch.Tensor, kernel_dtype: torch.dtype = torch.bfloat16,
                 own_kernel: bool = True, symmetric: bool = False, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.kernel_dtype = kernel_dtype
        self.own_kernel = own_kernel and kernels.load()
        q, scale, low = quantize_groups(weight, self.bits, symmetric)
        self.register_buffer("packed", kernels.pack(q, scale, low, self.bits))
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        if not self.own_kernel:
            self.keep_for_fallback(q, scale, low)

    @classmethod
    def from_packed(cls, packed: torch.Tensor) -> "GroupLinear":
        """A layer over weights already in the kernel's layout (a GGUF file's blocks:
        loaders/gguf_groups.py), where our kernel runs."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.kernel_dtype, layer.own_kernel = torch.bfloat16, True
        layer.register_buffer("packed", packed)
        layer.register_buffer("bias", None)
        return layer

    def keep_for_fallback(self, q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> None:
        """Keep what the product needs where our kernel cannot be built: nothing beyond `packed`."""

    def decoding_buffers(self) -> tuple[str, ...]:
        """The buffers a decode step reads."""
        return ("packed",) if self.bias is None else ("packed", "bias")

    def unpacked(self) -> torch.Tensor:
        """The (N, K) weight in the kernel's dtype."""
        return kernels.unpack(self.packed).to(self.kernel_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B * T, in): the kernels take a matrix
        y = self.product(flat)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    def product(self, flat: torch.Tensor) -> torch.Tensor:
        if self.own_kernel:
            kernel = torch.ops.nexttoken.int4_matmul if self.bits == 4 else torch.ops.nexttoken.int8_matmul
            return kernel(flat.contiguous(), self.packed, self.unpacked_min_rows)
        return (flat.to(self.kernel_dtype) @ self.unpacked().T).to(flat.dtype)


class Int8Linear(GroupLinear):
    """A GroupLinear of 8-bit values: twice int4's bytes, for weights that 4 bits would round. Its
    prompts stay in the tile kernel too: weights rounded to bfloat16 would undo much of what the
    finer grid holds (docs/kernels.md)."""

    bits = 8
    unpacked_min_rows = 2**62  # no prompt is this long


class Int8Head(Int8Linear):
    """A quantized model's output head: symmetric 8-bit groups, which hold a Q8_0 table (the
    built-in model's) exactly in about half of float16's bytes, and float32 scores whatever x's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight.detach(), symmetric=True, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


class GroupEmbedding(nn.Module):
    """Embedding lookups in a table kept in the kernels' groups: the rows asked for, dequantized.
    A quantized model's head tied to its embeddings lends them its bytes (its Q8_0 values, exactly),
    where a float16 copy of SmolLM2's table for the lookups took 57 MB more."""

    def __init__(self, packed: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("packed", packed)  # the head's own tensor: kept once

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return kernels.unpack(self.packed, ids.reshape(-1)).view(*ids.shape, -1)


class Int4Linear(GroupLinear):
    """A GroupLinear of 4-bit values. Where our kernel cannot be built, up to 16 rows go through
    PyTorch's int4 kernel, which keeps a copy of the weight in its own layout, and more rows (a
    prompt) through the unpacked weight, as PyTorch's kernel's cost grows with the rows while the
    unpacking is paid once."""

    bits = 4

    def keep_for_fallback(self, q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> None:
        # PyTorch's kernel computes (q - 8) * scale + zero, so its zero is the minimum moved by 8 steps
        self.register_buffer("aten_weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        scale_and_zero = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1)
        self.register_buffer("scale_and_zero", scale_and_zero.contiguous().to(self.kernel_dtype))

    def decoding_buffers(self) -> tuple[str, ...]:
        weights = ("packed",) if self.own_kernel else ("aten_weight", "scale_and_zero")
        return weights if self.bias is None else (*weights, "bias")

    def product(self, flat: torch.Tensor) -> torch.Tensor:
        if self.own_kernel or flat.shape[0] > PYTORCH_INT4_KERNEL_MAX_ROWS:
            return super().product(flat)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(self.kernel_dtype), self.aten_weight, GROUP,
                                                          self.scale_and_zero).to(flat.dtype)


def quantize_linears(model: nn.Module, bits: int, kernel_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Swap every nn.Linear of `model` that the kernels can take for an Int4Linear or Int8Linear
    (its bias, if any, kept in float32), in place; returns the model."""
    linear = Int4Linear if bits == 4 else Int8Linear

    def quantized(layer: nn.Linear) -> GroupLinear | None:
        if not groups_fit(layer.weight):
            return None
        return linear(layer.weight.detach(), kernel_dtype, bias=layer.bias)

    return swap_linears(model, quantized)


# up to this many rows (by weight dtype, and whether our kernel is built), a product with 16-bit
# weights is faster in our kernel (or, without it, in PyTorch's float16 product) than as PyTorch's
# product with the weight cast to x's dtype, as measured on SmolLM2 (docs/kernels.md). float16 (the
# quantized models' head): ours widens each weight row once for every 8 rows of x; bfloat16 (a
# bfloat16 model's layers and head): from 8 rows on PyTorch's is as fast or faster.
KERNEL_MAX_ROWS = {(torch.float16, True): 128, (torch.float16, False): 8,
                   (torch.bfloat16, True): 4, (torch.bfloat16, False): 0}
# a bfloat16 head (SmolLM2's 49,152 × 576) stays faster in our kernel up to more rows than a layer
BFLOAT16_HEAD_KERNEL_MAX_ROWS = 8


class Linear16(nn.Module):
    """y = x @ w^T (+ b) with w kept in float16 or bfloat16 and x in any dtype: the quantized models'
    float16 head, and a bfloat16 model's layers and head. A decode step's few rows go through our
    kernel (kernels.py), which widens the weights to float32 and keeps x as it is, and reads them
    faster than PyTorch's float16 and bfloat16 products. More rows (a prompt, scoring a text)
    multiply the weight cast to x's dtype.

    A `head` returns float32 scores: the kernel's sums are float32, and rounding a bfloat16 model's
    scores to bfloat16 (steps of 0.125 around 20) ties the two best candidates where float32
    chooses between them (docs/kernels.md)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None, head: bool = False) -> None:
        super().__init__()
        self.weight = weight  # (out, in); may be shared with the embedding table
        self.bias = bias
        self.head = head
        self.own_kernel = kernels.load()  # False: PyTorch's float16 product, or none for bfloat16
        self.max_rows = KERNEL_MAX_ROWS[weight.dtype, self.own_kernel]
        if head and self.own_kernel and weight.dtype == torch.bfloat16:
            self.max_rows = BFLOAT16_HEAD_KERNEL_MAX_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out_dtype = torch.float32 if self.head else x.dtype
        if flat.shape[0] > self.max_rows or x.requires_grad:
            y = nn.functional.linear(flat, self.weight.to(x.dtype))
        elif self.own_kernel:
            y = torch.ops.nexttoken.matvec(flat.to(out_dtype), self.weight)  # returns its x's dtype
        else:
            y = nn.functional.linear(flat.to(self.weight.dtype), self.weight)
        y = y.to(out_dtype) if self.bias is None else y.to(out_dtype) + self.bias.to(out_dtype)
        return y.view(*x.shape[:-1], y.shape[-1])


# float32 products of up to this many rows run faster in our kernel than in PyTorch's, as measured on
# SmolLM2's layers, their weights read from memory; the 49,152 × 576 head keeps ahead up to more rows
# (docs/kernels.md).
FLOAT32_KERNEL_MAX_ROWS = 8
FLOAT32_HEAD_KERNEL_MAX_ROWS = 32


def float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   max_rows: int = FLOAT32_KERNEL_MAX_ROWS) -> torch.Tensor:
    """nn.functional.linear, with a float32 weight's decode steps, up to `max_rows` rows of x, in
    our kernel where it may compute on them (nothing to differentiate, kernels built)."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] > max_rows or weight.dtype != torch.float32 or not kernels.computes_on(flat, weight):
        return nn.functional.linear(x, weight, bias)
    y = torch.ops.nexttoken.matvec(flat, weight)
    y = y if bias is None else y + bias.to(y.dtype)
    return y.view(*x.shape[:-1], y.shape[-1])


class Float32Linear(nn.Linear):
    """An nn.Linear (trained, adapted and saved as one) whose decode steps run in our kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_linear(x, self.weight, self.bias)


def float32_products(model: nn.Module) -> None:
    """Make every plain nn.Linear of `model` a Float32Linear with the same parameters, in place."""
    def with_kernel(layer: nn.Linear) -> Float32Linear | None:
        if type(layer) is not nn.Linear:
            return None
        swapped = Float32Linear(layer.in_features, layer.out_features, bias=False, device="meta")
        swapped.weight, swapped.bias = layer.weight, layer.bias
        return swapped

    swap_linears(model, with_kernel)


def frozen(weight: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(weight.detach(), requires_grad=False)


def head16(model: nn.Module, dtype: torch.dtype) -> None:
    """Give `model` (a Transformer) a Linear16 head in `dtype` (float16 or bfloat16), with float32
    scores. A tied table is kept once, in that dtype, for both the embedding lookup (which casts the
    rows it reads) and the head."""
    if model.lm_head is None:
        model.embed.weight = frozen(model.embed.weight.to(dtype))
        model.lm_head = Linear16(model.embed.weight, head=True)
    else:
        bias = model.lm_head.bias
        model.lm_head = Linear16(frozen(model.lm_head.weight.to(dtype)), None if bias is None else frozen(bias),
                                 head=True)


def quantized_head(model: nn.Module) -> None:
    """Give a quantized `model` (a Transformer) an Int8Head where our kernel runs, from which a tied
    table's embedding lookups then read too (GroupEmbedding); elsewhere, a float16 head (head16)."""
    if isinstance(model.lm_head, Int8Head):  # loaded so, from the file's blocks
        return
    weight = model.embed.weight if model.lm_head is None else model.lm_head.weight
    if not (kernels.load() and groups_fit(weight)):
        head16(model, torch.float16)
    elif model.lm_head is None:
        model.lm_head = Int8Head(weight)
        model.embed = GroupEmbedding(model.lm_head.packed)
    else:
        model.lm_head = Int8Head(weight, model.lm_head.bias)


def widen_bfloat16_products(model: nn.Module) -> None:
    """Swap every nn.Linear of a bfloat16 `model` (a Transformer), and its head, for a Linear16,
    in place."""
    def widened(layer: nn.Linear) -> Linear16:
        return Linear16(frozen(layer.weight), None if layer.bias is None else frozen(layer.bias))

    head16(model, torch.bfloat16)
    swap_linears(model, widened)
