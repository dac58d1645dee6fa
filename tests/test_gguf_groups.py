"""GGUF Q4_0, Q4_1 and Q8_0 matrices loaded straight into the int4/int8 kernels' groups: the same
bytes as loading them through float32 and quantizing again, where that is exact, and the file's
weights exactly, always; `quantize="auto"` choosing each file type's path; and one-line errors for
tensors that do not fit their type, their model or their file."""

import struct

import numpy as np
import pytest
import torch

from nexttoken.accel import kernels
from nexttoken.accel.precision import Precision, resolve_precision, set_precision
from nexttoken.accel.quantize import GroupEmbedding, GroupLinear, Int4Linear, Int8Head, Int8Linear, quantize_groups
from nexttoken.errors import NextTokenError
from nexttoken.loaders.gguf import load_gguf_model
from nexttoken.loaders.gguf_file import read_gguf
from tiny_gguf import T, tiny_llama, write_llama_gguf

needs_kernels = pytest.mark.skipif(not kernels.load(), reason="our kernels cannot be built here")
BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q8_0: 8}


def requantized(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """What set_precision keeps for `weight`: asymmetric groups, and 8-bit ones symmetric as a Q8_0
    block is (Int8Head's)."""
    return kernels.pack(*quantize_groups(weight, bits, symmetric=bits == 8), bits)


@needs_kernels
@pytest.mark.parametrize("matrix_type", [T.Q4_1, T.Q4_0, T.Q8_0])
@pytest.mark.parametrize("tie", [True, False])
def test_direct_groups_equal_float32_requantized(tmp_path, matrix_type, tie):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(tie), matrix_type)
    reference, _ = load_gguf_model(path, dtype=torch.float32)
    direct, _ = load_gguf_model(path, dtype=torch.float32, bits=BITS[matrix_type])
    weights = dict(reference.named_parameters())
    layers = {name: m for name, m in direct.named_modules() if isinstance(m, GroupLinear)}
    expected_layers = 2 * 4 + (1 if tie and matrix_type == T.Q8_0 else 0)  # per block: wqkv, wo, w_gate_up, w_down
    assert len(layers) == expected_layers
    for name, layer in layers.items():
        weight = weights["embed.weight" if name == "lm_head" else f"{name}.weight"]
        assert torch.equal(kernels.unpack(layer.packed), weight), name  # the file's weights, exactly
        if matrix_type != T.Q4_0:  # Q4_0's block of fewer than 16 steps re-quantizes onto a finer grid
            assert torch.equal(layer.packed, requantized(weight, layer.bits)), name
    for name, tensor in direct.state_dict().items():  # everything else as the float32 load has it
        if name in weights:
            assert torch.equal(tensor, weights[name]), name
    if tie and matrix_type == T.Q8_0:
        assert isinstance(direct.lm_head, Int8Head) and isinstance(direct.embed, GroupEmbedding)
        assert direct.embed.packed is direct.lm_head.packed


@needs_kernels
def test_q4_0_blocks_that_span_every_step_requantize_to_the_same_bytes(tmp_path):
    # each group holds -8..7 steps of one scale: the re-quantized grid is the block's own
    steps = torch.arange(-8, 8, dtype=torch.float32).repeat(2)[torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    weight = (steps * torch.rand(64, 2, 1, generator=torch.Generator().manual_seed(1)).add(0.1)).reshape(64, 64)
    blocks = gguf_quantize(weight.numpy(), T.Q4_0)
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), T.Q4_0,
                            extra_tensors={"blk.0.attn_output.weight": (blocks, T.Q4_0)})
    direct, _ = load_gguf_model(path, bits=4)
    reference, _ = load_gguf_model(path)
    weight = reference.blocks[0].attn.wo.weight
    assert torch.equal(direct.blocks[0].attn.wo.packed, requantized(weight, 4))


def gguf_quantize(values: np.ndarray, ggml_type: T) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(values, ggml_type)


@needs_kernels
@pytest.mark.parametrize("matrix_type, bits", [(T.Q8_0, 4), (T.Q4_1, 8)])
def test_other_widths_and_types_are_quantized_from_float32_one_matrix_at_a_time(tmp_path, matrix_type, bits):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), matrix_type)
    model, _ = load_gguf_model(path, bits=bits)  # as set_precision quantizes a float32 model's layers
    reference = set_precision(load_gguf_model(path)[0], "float32", f"int{bits}", huge_pages=False)
    linear = Int4Linear if bits == 4 else Int8Linear
    layers = [m for m in model.modules() if isinstance(m, GroupLinear) and not isinstance(m, Int8Head)]
    assert layers and all(type(m) is linear for m in layers)
    for ours, theirs in zip(layers, [m for m in reference.blocks.modules() if isinstance(m, GroupLinear)]):
        assert torch.equal(ours.packed, theirs.packed)
    assert isinstance(model.lm_head, Int8Head) == (matrix_type == T.Q8_0)  # a tied Q8_0 table keeps its 8 bits


@pytest.mark.parametrize("matrix_type, precision", [
    (T.Q4_1, Precision("float32", "int4")), (T.Q4_0, Precision("float32", "int4")),
    (T.Q8_0, Precision("float32", "int8")), (T.F16, Precision("bfloat16")), (T.BF16, Precision("bfloat16")),
    (T.F32, Precision("float32"))])
def test_auto_runs_each_file_as_it_stores_its_matrices(tmp_path, matrix_type, precision):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), matrix_type)
    assert resolve_precision(read_gguf(path).matrix_type().name) == precision


def test_named_precision_overrides_auto():
    assert resolve_precision("Q4_1", dtype="float32") == Precision("float32", "none")  # the reference
    assert resolve_precision("Q4_1", dtype="bfloat16") == Precision("bfloat16", "none")
    assert resolve_precision("F16", quantize="int8") == Precision("float32", "int8")
    assert resolve_precision("Q4_1", "bfloat16", "int4") == Precision("bfloat16", "int4")
    assert resolve_precision("IQ2_XS") == Precision("float32", "none")  # no faithful group width: the reference
    with pytest.raises(NextTokenError, match="quantize must be one of auto, none, int8, int4; got 'int3'"):
        resolve_precision("Q4_1", quantize="int3")
    with pytest.raises(NextTokenError, match="dtype must be one of"):
        resolve_precision("Q4_1", dtype="float64")


def patch_tensor_info(path, name: str, dims: list[int] | None = None, raw_type: int | None = None) -> None:
    """Rewrite the dimensions or the type number of tensor `name` in the file's header."""
    data = bytearray(path.read_bytes())
    at = data.index(name.encode()) + len(name)  # right after its name: n_dims, dims, type, offset
    n_dims = struct.unpack_from("<I", data, at)[0]
    if dims is not None:
        struct.pack_into(f"<{n_dims}Q", data, at + 4, *dims)
    if raw_type is not None:
        struct.pack_into("<I", data, at + 4 + 8 * n_dims, raw_type)
    path.write_bytes(bytes(data))


def test_unknown_tensor_type_is_named(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), T.Q4_1)
    patch_tensor_info(path, "blk.1.ffn_up.weight", raw_type=250)
    with pytest.raises(NextTokenError, match=r"tensor 'blk.1.ffn_up.weight' has an unknown type \(250\)"):
        read_gguf(path)


def test_rows_that_are_not_whole_blocks_are_named(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), T.Q4_0)
    patch_tensor_info(path, "blk.0.attn_q.weight", dims=[48, 64])
    with pytest.raises(NextTokenError, match="tensor 'blk.0.attn_q.weight' has rows of 48 values, not whole Q4_0 blocks of 32"):
        read_gguf(path)


def test_a_tensor_past_the_end_is_named(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), T.Q8_0)
    patch_tensor_info(path, "blk.0.attn_q.weight", dims=[64, 64 * 1000])
    with pytest.raises(NextTokenError, match="tensor 'blk.0.attn_q.weight' .* runs past the end of the file"):
        read_gguf(path)


def test_a_shape_the_model_does_not_take_is_named(tmp_path):
    wrong = (np.zeros((32, 64), np.float32), None)  # half the rows of the query projection
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), extra_tensors={"blk.0.attn_q.weight": wrong})
    with pytest.raises(NextTokenError, match=r"tensor 'blk.0.attn_q.weight' has shape \[32, 64\]; the model its "
                                             r"metadata describes needs \[64, 64\]"):
        load_gguf_model(path, bits=4)


def test_a_cached_tokenizer_is_the_one_built_from_the_metadata(tmp_path, smollm2_path):
    from nexttoken.tokenizer import Tokenizer

    metadata = read_gguf(smollm2_path).metadata
    cache = tmp_path / "tokenizer.json"
    built = Tokenizer.from_gguf_metadata(metadata, cache)
    assert cache.is_file()
    cached = Tokenizer.from_gguf_metadata(metadata, cache)
    text = "<|im_start|>user\nHéllo, wörld!  123 <|im_end|>\n日本語 tabs\tand    spaces"
    assert cached.encode(text) == built.encode(text) == Tokenizer.from_gguf_metadata(metadata).encode(text)
    assert cached.decode(built.encode(text)) == built.decode(built.encode(text))
    cache.write_text("{ damaged")
    assert Tokenizer.from_gguf_metadata(metadata, cache).encode(text) == built.encode(text)  # built again


@pytest.mark.parametrize("dtype, precision", [(torch.bfloat16, Precision("bfloat16")), (torch.float32, Precision("float32"))])
def test_auto_runs_a_safetensors_folder_in_its_dtype(tmp_path, dtype, precision):
    from nexttoken.loaders.safetensors import load_hf_model, stored_matrix_type

    reference = tiny_llama().to(dtype)
    reference.save_pretrained(tmp_path)
    assert resolve_precision(stored_matrix_type(tmp_path)) == precision
    model, _, _ = load_hf_model(tmp_path, dtype)
    assert model.embed.weight.dtype == dtype
    assert torch.equal(model.embed.weight, reference.model.embed_tokens.weight)


@needs_kernels
def test_attention_maps_read_a_quantized_model(tmp_path):
    """The inspector (apps.attention, /v1/attention) on the default int4 path: its float32 products
    read the groups' exact values, so the maps are the float32 model's."""
    from nexttoken.apps.attention import last_token_attention

    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), T.Q4_1)
    reference, _ = load_gguf_model(path)
    quantized = set_precision(load_gguf_model(path, bits=4)[0], "float32", "int4", huge_pages=False)
    ids = [1, 5, 9, 20, 33, 40, 2]
    torch.testing.assert_close(last_token_attention(quantized, ids), last_token_attention(reference, ids),
                               rtol=0, atol=1e-3)


def test_the_file_type_is_that_of_the_blocks_matrices(tmp_path):
    # a float16 table larger than all the blocks' matrices together, as Gemma 3's is
    wide_table = (np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float16), None)
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(), T.Q4_0, extra_tensors={"token_embd.weight": wide_table})
    assert read_gguf(path).matrix_type() == T.Q4_0
