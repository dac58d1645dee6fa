"""model.attention.attention: SDPA's attention, written out where gradients are recorded over few
keys; the same outputs and gradients either way."""

import pytest
import torch
import torch.nn.functional as F

from nexttoken.model.attention import EXPLICIT_MAX_KEYS, attention


def inputs(heads: int, kv_heads: int, queries: int, keys: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, heads, queries, 16), (2, kv_heads, keys, 16), (2, kv_heads, keys, 16)]
    return [torch.randn(shape, generator=g).requires_grad_() for shape in shapes]


def padding(keys: int) -> torch.Tensor:
    mask = torch.ones(2, 1, 1, keys, dtype=torch.bool)
    mask[1, :, :, keys - 3 :] = False  # the second row's last three keys are padding
    return mask


CASES = {  # heads, key/value heads, queries, keys, attention keywords
    "padding": (4, 4, 7, 7, lambda: {"mask": padding(7)}),
    "biases (T5)": (4, 4, 5, 9, lambda: {"mask": torch.randn(1, 4, 5, 9, generator=torch.Generator().manual_seed(1))}),
    "causal": (4, 4, 6, 6, lambda: {"causal": True}),
    "causal after a past": (4, 4, 3, 8, lambda: {"mask": torch.arange(8) <= torch.arange(5, 8).unsqueeze(1)}),
    "grouped key/value heads": (6, 2, 5, 5, lambda: {"causal": True, "scale": 0.3}),
    "cross-attention": (4, 2, 3, 11, lambda: {"mask": padding(11)}),
}


@pytest.mark.parametrize("case", CASES)
def test_written_out_attention_has_sdpa_s_outputs_and_gradients(case):
    heads, kv_heads, queries, keys, keywords = CASES[case]
    ours, theirs = inputs(heads, kv_heads, queries, keys), inputs(heads, kv_heads, queries, keys)
    out_grad = torch.randn(2, heads, queries, 16, generator=torch.Generator().manual_seed(2))
    sdpa_keywords = {"attn_mask" if name == "mask" else "is_causal" if name == "causal" else name: value
                     for name, value in keywords().items()}
    attention(*ours, **keywords()).backward(out_grad)
    F.scaled_dot_product_attention(*theirs, enable_gqa=True, **sdpa_keywords).backward(out_grad)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(attention(*ours, **keywords()), F.scaled_dot_product_attention(
            *theirs, enable_gqa=True, **sdpa_keywords), rtol=1e-5, atol=1e-5)


def test_under_autocast_written_out_attention_is_sdpa_s_to_bfloat16_rounding():
    q, k, v = inputs(4, 2, 6, 9)
    mask = padding(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = attention(q, k, v, mask)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)


def test_written_out_only_where_gradients_are_recorded_over_few_keys(monkeypatch):
    calls = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *args, **kwargs: calls.append(args[1].shape[2]))
    q, k, v = inputs(4, 4, 3, 9)
    attention(q, k, v)  # recorded, few keys: written out
    with torch.no_grad():
        attention(q, k, v)  # inference
    attention(q.detach(), k.detach(), v.detach())  # nothing to record
    long_q, long_k, long_v = inputs(4, 4, 3, EXPLICIT_MAX_KEYS + 1)
    attention(long_q, long_k, long_v)
    assert calls == [9, 9, EXPLICIT_MAX_KEYS + 1]


def test_a_query_that_sees_no_key_stays_finite():
    q, k, v = inputs(2, 2, 4, 4)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, :, 0] = False  # row 1's first query sees nothing
    out = attention(q, k, v, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
