"""Knockout of the next token: the core's extra attention mask on tiny decoders of every shape (the
kernels honour it as SDPA does), parity with Hugging Face's eager attention under the same 4-D
masks on SmolLM2, one batched pass per prompt, and the article's claim about "The capital of China is"."""

import copy

import pytest
import torch

from nexttoken.accel.accelerate import accelerate
from nexttoken.apps.knockout import knockout, knockout_masks
from nexttoken.config import ModelConfig
from nexttoken.errors import ContextWindowExceeded, NextTokenError
from nexttoken.model.transformer import Transformer

CAPITAL = "The capital of China is"

# decoders the core builds: Llama (rotary, RMSNorm, SwiGLU, grouped heads), GPT-2-like (learned
# positions, LayerNorm, GELU, biases), post-norm with sinusoidal positions, T5-like (relative bias)
DECODERS = {
    "llama": dict(n_kv_head=2),
    "gpt2": dict(positions="learned", norm="layer", mlp="gelu", bias=True),
    "post-norm": dict(positions="sinusoidal", norm="layer", mlp="relu", pre_norm=False),
    "relative": dict(positions="relative", norm="rms", mlp="relu"),
}


def tiny_decoder(**fields) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=96, d_model=128, n_layer=2, n_head=4, d_ff=160, max_seq_len=64, **fields)
    model = Transformer(config).eval()
    for p in model.parameters():  # larger than the default init, so that attention is far from uniform
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
    return model


@pytest.mark.parametrize("name", DECODERS)
def test_an_all_true_mask_changes_nothing(name):
    model = tiny_decoder(**DECODERS[name])
    ids = torch.randint(0, 96, (2, 9))
    with torch.inference_mode():
        plain = model.hidden_states(ids)
        masked = model.hidden_states(ids, attention_mask=torch.ones(1, 1, 9, 9, dtype=torch.bool))
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", DECODERS)
def test_hiding_a_token_from_the_last_query_changes_the_last_position_only(name):
    model = tiny_decoder(**DECODERS[name])
    ids = torch.randint(0, 96, (1, 9))
    masks = knockout_masks(9)[:4]  # nothing hidden, then positions 0, 1, 2 hidden from the last query
    with torch.inference_mode():
        hidden = model.hidden_states(ids.expand(4, -1), attention_mask=masks)  # (4, T, d_model)
        alone = torch.cat([model.hidden_states(ids, attention_mask=m[None]) for m in masks])
    torch.testing.assert_close(hidden, alone, rtol=0, atol=1e-5)  # the rows of a batch are independent
    torch.testing.assert_close(hidden[1:, :-1], hidden[:1, :-1].expand(3, -1, -1), rtol=0, atol=1e-6)
    assert ((hidden[1:, -1] - hidden[0, -1]).abs().amax(dim=-1) > 1e-5).all()


@pytest.mark.parametrize("n_tokens", [9, 40])  # 40: long enough for the prompt kernel
def test_kernels_honour_the_mask_as_sdpa_does(n_tokens):
    reference = tiny_decoder(n_kv_head=2)
    fast = accelerate(copy.deepcopy(reference))
    ids = torch.randint(0, 96, (1, n_tokens))
    masks = knockout_masks(n_tokens)
    with torch.inference_mode():
        for last_only in (False, True):
            theirs = reference.hidden_states(ids.expand(len(masks), -1), last_only=last_only, attention_mask=masks)
            ours = fast.hidden_states(ids.expand(len(masks), -1), last_only=last_only, attention_mask=masks)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_masks_hide_one_token_or_keep_two():
    masks = knockout_masks(4)[:, 0]  # (R, T, T)
    assert masks.shape == (1 + 3 + 2, 4, 4)
    assert masks[:, :-1].all()  # only the last query is ever restricted
    last = masks[:, -1].int().tolist()
    assert last == [[1, 1, 1, 1],
                    [0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1],
                    [1, 1, 0, 1], [1, 0, 1, 1]]
    assert knockout_masks(1).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("name", DECODERS)
def test_knockout_on_tiny_decoders(name):
    model = tiny_decoder(**DECODERS[name])
    table = knockout(model, [3, 14, 15, 92, 65, 35])
    assert [k.position for k in table.without] == [0, 1, 2, 3, 4]
    assert [k.position for k in table.only] == [1, 2, 3, 4]
    assert all(0 <= k.p <= 1 for k in table.without + table.only)
    assert table.decisive()


def reference_probabilities(reference_model, ids: list[int], target: int) -> torch.Tensor:
    """P(target) under every knockout mask in Hugging Face's eager attention, as an additive mask."""
    masks = knockout_masks(len(ids))
    allowed = masks & torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    previous = reference_model.config._attn_implementation
    try:
        reference_model.set_attn_implementation("eager")
        with torch.inference_mode():
            logits = reference_model(torch.tensor([ids]).expand(len(masks), -1), attention_mask=bias).logits
    finally:
        reference_model.set_attn_implementation(previous)
    return logits[:, -1].softmax(dim=-1)[:, target]


@pytest.mark.parametrize("prompt, chat", [(CAPITAL, False), ("The capital of France is", False),
                                          ("Water freezes at zero degrees", False), ("Name a red fruit.", True)])
def test_knockout_matches_reference_eager_attention(smollm2, reference_model, prompt, chat):
    ids = smollm2.encode(prompt, chat=chat)
    table = knockout(smollm2.model, ids)
    ours = torch.tensor([table.p] + [k.p for k in table.without] + [k.p for k in table.only])
    theirs = reference_probabilities(reference_model, ids, table.target)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_all_knockouts_run_in_one_pass(smollm2, monkeypatch):
    calls = []
    hidden_states = smollm2.model.hidden_states
    monkeypatch.setattr(smollm2.model, "hidden_states", lambda *a, **kw: calls.append(a[0].shape) or hidden_states(*a, **kw))
    ids = smollm2.encode(CAPITAL)
    knockout(smollm2.model, ids)
    assert calls == [(1 + 4 + 3, len(ids))]


def test_what_beijing_depends_on(smollm2):
    """The article: to predict Beijing the model needs China and capital."""
    ids = smollm2.encode(CAPITAL)
    table = knockout(smollm2.model, ids)
    assert smollm2.tokenizer.decode([table.target]) == " Beijing" and table.p > 0.5
    without = {smollm2.tokenizer.decode([ids[k.position]]): k.p for k in table.without}
    assert without[" China"] < 0.001 and without[" capital"] < 0.02 and without[" of"] > 0.25
    assert table.decisive() == [1, 3]


def test_a_given_target(smollm2):
    ids = smollm2.encode("The capital of France is")
    paris = smollm2.tokenizer.encode(" Paris", add_bos=False)[0]
    berlin = smollm2.tokenizer.encode(" Berlin", add_bos=False)[0]
    assert knockout(smollm2.model, ids).target == paris
    table = knockout(smollm2.model, ids, berlin)
    assert table.target == berlin and table.p < 0.05


def test_bad_prompts(smollm2, minilm):
    with pytest.raises(NextTokenError, match="^the prompt is empty"):
        knockout(smollm2.model, [])
    with pytest.raises(ContextWindowExceeded, match="more than the model's context window of 8192$"):
        knockout(smollm2.model, [1] * 8193)
    with pytest.raises(NextTokenError, match="needs a decoder"):
        knockout(minilm.model, [101, 102])
