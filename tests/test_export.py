"""Export to a Hugging Face Llama folder and to GGUF, checked by loading each export with transformers
and with our own loaders: the logits must be those of the model exported."""

from pathlib import Path

import pytest
import torch

from nexttoken import pretrained
from nexttoken.accel.quantize import Int4Linear
from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.tokenizer import Tokenizer
from nexttoken.tokenizer.presets import chat_format
from nexttoken.tokenizer.training import read_texts, save_tokenizer, shakespeare_files, train_bpe
from nexttoken.train.export import export_gguf, export_hf, hf_state_dict, pre_tokenizer_name

TEXTS = ["To be, or not to be, that is the question:", "Hi <|eot_id|> there\n\n  café 123", ""]
MESSAGES = [{"role": "user", "content": "Who speaks first in Hamlet?"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    chat = chat_format("llama3")
    backend = train_bpe(read_texts(shakespeare_files()[:1]), 600, chat)
    return Tokenizer.from_hf_folder(save_tokenizer(backend, chat, tmp_path_factory.mktemp("tokenizer")))


def tiny_decoder(tie: bool, vocab_size: int = 608) -> Transformer:
    """A random Llama-configured core, head_dim unlike d_model / n_head so that shapes are checked."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab_size, d_model=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=24, d_ff=160,
                         max_seq_len=64, norm_eps=1e-6, rope_theta=500.0, tie_embeddings=tie)
    model = Transformer(config).eval()
    with torch.no_grad():  # random norm weights, so a wrong norm mapping shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def exported(request, tokenizer, tmp_path_factory) -> tuple[Transformer, Path, Path]:
    model = tiny_decoder(request.param)
    folder = export_hf(model, tokenizer, tmp_path_factory.mktemp("hf"))
    return model, folder, export_gguf(model, tokenizer, folder / "model.gguf")


def prompt_ids(tokenizer: Tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(TEXTS[0] + TEXTS[1])])


def test_hf_export_writes_a_llama_folder_with_split_projections(exported):
    model, folder, _ = exported
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "generation_config.json", "model.gguf",
                                                      "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    tensors = hf_state_dict(model)
    block = model.blocks[1]
    q, k, v = (tensors[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert (q.shape, k.shape, v.shape) == ((96, 64), (48, 64), (48, 64))
    torch.testing.assert_close(torch.cat([q, k, v]), block.attn.wqkv.weight, rtol=0, atol=0)
    gate, up = tensors["model.layers.1.mlp.gate_proj.weight"], tensors["model.layers.1.mlp.up_proj.weight"]
    torch.testing.assert_close(torch.cat([gate, up]), block.mlp.w_gate_up.weight, rtol=0, atol=0)
    assert ("lm_head.weight" in tensors) != model.config.tie_embeddings


@torch.no_grad()
def test_transformers_loads_hf_export_with_same_logits(exported, tokenizer):
    from transformers import LlamaForCausalLM

    model, folder, _ = exported
    ids = prompt_ids(tokenizer)
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(reference(ids).logits, model(ids), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_pretrained_load_reads_hf_folder(exported, tokenizer):
    model, folder, _ = exported
    lm = pretrained.load(folder)
    ids = prompt_ids(tokenizer)
    torch.testing.assert_close(lm.model(ids), model(ids), rtol=1e-5, atol=1e-5)
    assert [lm.tokenizer.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    assert lm.tokenizer.end_ids == tokenizer.end_ids
    # Llama 3's template writes BOS itself: the chat prompt must not start with two
    assert lm.encode(MESSAGES[0]["content"], chat=True)[:2] == [tokenizer.bos_id, tokenizer.backend.token_to_id("<|start_header_id|>")]


def test_a_draft_model_must_share_the_vocabulary(exported, smollm2_path):
    _, folder, gguf_path = exported
    lm = pretrained.load(folder, draft=gguf_path)  # the same model and tokenizer, from the GGUF
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(lm.draft.model(ids), lm.model(ids), rtol=1e-5, atol=1e-5)
    assert isinstance(pretrained.load(folder, draft="int4").draft.model.blocks[0].attn.wqkv, Int4Linear)
    with pytest.raises(NextTokenError, match="the draft model's vocabulary is not the model's"):
        pretrained.load(folder, draft=smollm2_path)


def test_transformers_tokenizer_reads_hf_export(exported, tokenizer):
    from transformers import AutoTokenizer

    _, folder, _ = exported
    reference = AutoTokenizer.from_pretrained(folder)
    assert [reference(t).input_ids for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    text = tokenizer.apply_chat_template(MESSAGES)
    assert reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == text


@torch.no_grad()
def test_our_gguf_loader_reads_gguf_export(exported, tokenizer):
    model, _, path = exported
    lm = pretrained.load(path)
    ids = prompt_ids(tokenizer)
    torch.testing.assert_close(lm.model(ids), model(ids), rtol=1e-5, atol=1e-5)
    assert [lm.tokenizer.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    assert lm.tokenizer.end_ids == tokenizer.end_ids
    assert lm.tokenizer.apply_chat_template(MESSAGES) == tokenizer.apply_chat_template(MESSAGES)


@torch.no_grad()
def test_transformers_loads_gguf_export_with_same_logits(exported, tokenizer):
    """transformers undoes llama.cpp's q/k permutation itself: a wrong permutation on export shows here."""
    from transformers import AutoModelForCausalLM

    model, folder, path = exported
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype="float32").eval()
    ids = prompt_ids(tokenizer)
    torch.testing.assert_close(reference(ids).logits, model(ids), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_f16_gguf_export_is_close(tokenizer, tmp_path):
    model = tiny_decoder(True)
    lm = pretrained.load(export_gguf(model, tokenizer, tmp_path / "model.gguf", dtype="f16"), dtype="float32")
    ids = prompt_ids(tokenizer)
    assert lm.model.blocks[0].attn.wqkv.weight.dtype == torch.float32
    torch.testing.assert_close(lm.model(ids), model(ids), rtol=0.02, atol=0.02)


def test_encoder_is_not_exported(tokenizer, tmp_path):
    config = ModelConfig(vocab_size=608, d_model=32, n_layer=1, n_head=2, d_ff=64, causal=False, norm="layer",
                         pre_norm=False, mlp="gelu", positions="learned", bias=True)
    with pytest.raises(NextTokenError, match="only Llama-configured decoders"):
        export_hf(Transformer(config), tokenizer, tmp_path)


def test_model_smaller_than_vocabulary_is_refused(tokenizer, tmp_path):
    with pytest.raises(NextTokenError, match="tokens but the model only"):
        export_gguf(tiny_decoder(True, vocab_size=500), tokenizer, tmp_path / "model.gguf")


def test_pre_tokenizer_rule_is_recognised(tokenizer, smollm2, tmp_path):
    assert pre_tokenizer_name(tokenizer) == "gpt-2"
    assert pre_tokenizer_name(smollm2.tokenizer) == "smollm"  # its GGUF's tokenizer.ggml.pre
    smollm2.tokenizer.backend.save(str(tmp_path / "tokenizer.json"))  # as export_hf writes it: the rule comes back
    assert pre_tokenizer_name(Tokenizer.from_hf_folder(tmp_path)) == "smollm"


def test_export_command_writes_both_layouts(exported, tokenizer, tmp_path):
    from typer.testing import CliRunner

    from nexttoken import cli

    model, _, path = exported
    runner = CliRunner()
    result = runner.invoke(cli.app, ["export", str(tmp_path / "hf"), "--model", str(path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.app, ["export", str(tmp_path / "again.gguf"), "--model", str(tmp_path / "hf"),
                                     "--format", "gguf"])
    assert result.exit_code == 0, result.output
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(pretrained.load(tmp_path / "again.gguf").model(ids), model(ids))
    with pytest.raises(NextTokenError, match="hf or gguf"):
        runner.invoke(cli.app, ["export", str(tmp_path / "x"), "--format", "onnx"], catch_exceptions=False)
