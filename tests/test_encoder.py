"""The encoder family: all-MiniLM-L6-v2 embeddings against sentence-transformers, tiny random BERTs
against transformers through the loader's own name table, the heads, and the loader's errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from nexttoken.encoder.sentence import load_encoder
from nexttoken.errors import NextTokenError
from nexttoken.loaders.safetensors import load_hf_model
from nexttoken.model.heads import SequenceClassifier, TokenClassifier

SENTENCES = [
    "A man is playing a guitar.",
    "",
    "?",
    "The quick brown fox jumps over the lazy dog. " * 80,  # longer than the 256-token window: cut
    "人工智能是计算机科学的一个分支，它试图理解智能的实质。",
    "Mixed 中文 and English, with émojis 😀 and numbers 12345.",
    "short",
    "Semantic search finds passages by meaning rather than by keywords.",
]


def test_embeddings_match_sentence_transformers(minilm, reference_sentence_model):
    for batch_size in (1, 3, 32):  # mixed-length batches, padded differently each time
        ours = minilm.embed(SENTENCES, batch_size=batch_size)
        theirs = reference_sentence_model.encode(SENTENCES, batch_size=batch_size, convert_to_numpy=True)
        cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
        assert cosine.min() >= 0.99999
        assert np.abs(ours - theirs).max() <= 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_token_ids_match_the_reference(minilm, reference_sentence_model):
    for text in SENTENCES:
        expected = reference_sentence_model.tokenizer(text, truncation=True, max_length=256)["input_ids"]
        assert minilm.encode(text) == expected


def test_similar_sentences_are_closer(minilm):
    a, b, c = minilm.embed(["How do I bake bread?", "What is a recipe for baking bread?", "The stock market fell."])
    assert a @ b > a @ c + 0.3


def test_minilm_has_no_masked_lm_head(minilm):
    with pytest.raises(NextTokenError, match="has no masked-LM head"):
        minilm.fill("Paris is the [MASK] of France.")


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)


@pytest.fixture(scope="module")
def tiny_mlm_folder(tmp_path_factory, minilm):
    """A random BertForMaskedLM saved as Hugging Face saves it, with MiniLM's tokenizer files."""
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config()).eval()
    folder = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm.path / name, folder / name)
    return folder, model


def test_tiny_bert_matches_transformers(tiny_mlm_folder):
    folder, reference = tiny_mlm_folder
    model, heads, _ = load_hf_model(folder)
    ids = torch.randint(1000, 30000, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False  # right padding, as BERT tokenizers pad
    mask[2, 3:] = False
    with torch.inference_mode():
        ours = model.hidden_states(ids, mask=mask)
        theirs = reference.bert(ids, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(ours[mask], theirs[mask], rtol=0, atol=1e-5)
    assert {"mlm.dense.weight", "mlm.norm.weight", "mlm.bias"} <= set(heads)


def test_fill_matches_bert_for_masked_lm(tiny_mlm_folder):
    folder, reference = tiny_mlm_folder
    encoder = load_encoder(folder)
    [candidates] = encoder.fill("paris is the [MASK] of france.", k=5)
    ids = torch.tensor([encoder.encode("paris is the [MASK] of france.")])
    with torch.inference_mode():
        logits = reference(ids).logits[0, ids[0].tolist().index(encoder.tokenizer.mask_id)]
    probs = logits.softmax(-1)
    assert [c.token_id for c in candidates] == probs.topk(5).indices.tolist()
    assert [c.probability for c in candidates] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-6)


def test_classification_heads_match_transformers(tiny_mlm_folder):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    folder, _ = tiny_mlm_folder
    config = tiny_bert_config()
    config.num_labels = 3
    model, _, _ = load_hf_model(folder)
    ids = torch.randint(1000, 30000, (2, 9), generator=torch.Generator().manual_seed(2))
    for reference_class, head_class in ((BertForSequenceClassification, SequenceClassifier),
                                        (BertForTokenClassification, TokenClassifier)):
        torch.manual_seed(3)
        reference = reference_class(config).eval()
        reference.bert.load_state_dict(reference_class.from_pretrained(folder, num_labels=3).bert.state_dict())
        head = head_class(model.config, 3).eval()
        head.out.load_state_dict(reference.classifier.state_dict())
        if head_class is SequenceClassifier:
            head.pooler.dense.load_state_dict(reference.bert.pooler.dense.state_dict())
        with torch.inference_mode():
            torch.testing.assert_close(head(model.hidden_states(ids)), reference(ids).logits, rtol=0, atol=1e-5)


def test_folder_without_weights(tmp_path, minilm):
    shutil.copy(minilm.path / "config.json", tmp_path / "config.json")
    with pytest.raises(NextTokenError, match="no model.safetensors"):
        load_encoder(tmp_path)


def test_config_of_another_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(NextTokenError, match="unsupported model architecture 'gpt2'"):
        load_encoder(tmp_path)


def test_missing_folder_and_corrupt_weights(tmp_path, minilm):
    with pytest.raises(NextTokenError, match="model folder not found"):
        load_encoder(tmp_path / "nowhere")
    shutil.copy(minilm.path / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(NextTokenError, match="truncated or corrupt safetensors file"):
        load_encoder(tmp_path)
