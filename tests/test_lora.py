"""LoRA adapters on our fused projections: the adapted model starts as the base model, only the
adapters train, and merging gives a plain model with the adapted model's outputs."""

import pytest
import torch

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.train.export import hf_state_dict
from nexttoken.train.lora import LoraConfig, LoRALinear, add_lora, lora_parameters, merge_lora
from nexttoken.train.objectives import next_token_loss

CONFIG = ModelConfig(vocab_size=128, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=160, max_seq_len=64)


def tiny_decoder() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CONFIG).eval()


def ids() -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_zero_b_gives_identical_outputs():
    model = tiny_decoder()
    before = model(ids())
    adapted = add_lora(model, LoraConfig(rank=4, alpha=8))
    assert torch.equal(adapted(ids()), before)


def test_only_adapters_are_trainable():
    model = add_lora(tiny_decoder(), LoraConfig(rank=4))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 4 * CONFIG.n_layer
    assert trainable == {name for name, _ in model.named_parameters() if name.endswith(("lora_a", "lora_b"))}
    assert len(trainable) == 2 * len(wrapped)
    assert sum(p.numel() for p in lora_parameters(model)) == sum(
        4 * (m.base.in_features + m.base.out_features) for m in wrapped)


def test_training_moves_adapters_only():
    model = add_lora(tiny_decoder(), LoraConfig(rank=4, alpha=8))
    frozen = {name: p.clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    tokens = ids()
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}
    losses = []
    for _ in range(5):
        loss, _ = next_token_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert any(m.lora_b.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))


@torch.no_grad()
@pytest.mark.parametrize("targets", [("wqkv", "wo", "w_gate_up", "w_down"), ("wqkv",)])
def test_merged_model_equals_adapted_model(targets):
    model = add_lora(tiny_decoder(), LoraConfig(rank=4, alpha=8, dropout=0.1, targets=targets))
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_b.normal_(std=0.05)  # as if trained
    model.eval()  # no dropout
    adapted = model(ids())
    assert not torch.allclose(adapted, tiny_decoder()(ids()), atol=1e-3)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    torch.testing.assert_close(merged(ids()), adapted, rtol=1e-5, atol=1e-5)
    assert set(merged.state_dict()) == set(tiny_decoder().state_dict())


def test_adapted_model_must_be_merged_before_export():
    model = add_lora(tiny_decoder(), LoraConfig(rank=2))
    with pytest.raises(NextTokenError, match="merge LoRA"):
        hf_state_dict(model)
    assert "model.layers.0.self_attn.q_proj.weight" in hf_state_dict(merge_lora(model))


def test_no_matching_layer_is_an_error():
    with pytest.raises(NextTokenError, match="no linear layers named"):
        add_lora(tiny_decoder(), LoraConfig(targets=("q_proj",)))
