"""Which tokens a sentence embedding depends on: MiniLM with one token hidden from every query, against
Hugging Face's BertModel (eager attention) under the same 4-D masks, in one batched pass."""

import numpy as np
import pytest
import torch

from nexttoken.apps.knockout import embedding_knockout, embedding_masks

SENTENCE = "The capital of China is Beijing"


@pytest.fixture(scope="module")
def reference_bert(minilm):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm.path), attn_implementation="eager").eval()


def test_masks_hide_one_key_from_every_query():
    masks = embedding_masks(3)[:, 0]  # (R, T, T)
    assert masks[0].all()
    for r in range(1, 4):
        assert (~masks[r][:, r - 1]).all() and masks[r].sum() == 3 * 2


@pytest.mark.parametrize("text", [SENTENCE, "A man is playing a guitar."])
def test_matches_reference_bert(minilm, reference_bert, text):
    result = embedding_knockout(minilm, text)
    masks = embedding_masks(len(result.ids))
    bias = torch.zeros(masks.shape).masked_fill(~masks, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        hidden = reference_bert(torch.tensor([result.ids]).expand(len(masks), -1), attention_mask=bias).last_hidden_state
    vectors = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1)  # MiniLM: mean pooling, normalised
    theirs = torch.nn.functional.cosine_similarity(vectors[1:], vectors[:1], dim=-1)
    assert (torch.tensor(result.similarity) - theirs).abs().max().item() <= 1e-4


def test_one_pass_and_what_matters(minilm, monkeypatch):
    calls = []
    hidden_states = minilm.model.hidden_states
    monkeypatch.setattr(minilm.model, "hidden_states", lambda *a, **kw: calls.append(a[0].shape) or hidden_states(*a, **kw))
    result = embedding_knockout(minilm, SENTENCE)
    assert calls == [(len(result.ids) + 1, len(result.ids))]
    words = [minilm.tokenizer.decode([i]) for i in result.ids]
    similarity = dict(zip(words, result.similarity))
    assert all(-1 <= s <= 1 + 1e-6 for s in result.similarity)
    # [CLS] is BERT's sink; past it, the content words move the embedding more than "the" and "of"
    assert min(similarity, key=similarity.get) == "[CLS]"
    assert max(similarity["capital"], similarity["beijing"]) < min(similarity["the"], similarity["of"])


def test_unmasked_row_is_the_embedding(minilm, monkeypatch):
    rows = []
    hidden_states = minilm.model.hidden_states
    monkeypatch.setattr(minilm.model, "hidden_states", lambda *a, **kw: rows.append(hidden_states(*a, **kw)) or rows[-1])
    embedding_knockout(minilm, SENTENCE)
    full = torch.nn.functional.normalize(rows[0][0].mean(dim=0), dim=-1).numpy()
    np.testing.assert_allclose(full, minilm.embed([SENTENCE])[0], atol=1e-5)
