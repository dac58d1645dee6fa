"""Gemma 3 270M's real weights (the opt-in extra; skipped without it): float32 logits against
transformers' Gemma3ForCausalLM on the same GGUF over English and Chinese text, greedy choices
wherever the reference's top two are clearly apart, and the article's example."""

import pytest
import torch

ENGLISH = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
           "movable metal type, oil-based ink and a wooden press adapted from wine making. Within fifty years, "
           "presses were working in more than two hundred European cities, and the price of books fell sharply. "
           "Scholars could compare identical copies of a text, which changed how knowledge was checked and shared.")
CHINESE = ("北京是中华人民共和国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的建城史，"
           "保存着故宫、天坛和颐和园等许多著名的古迹。每年都有大量游客来到北京，参观长城，品尝烤鸭，"
           "感受传统与现代交融的城市生活。问：中国的首都是哪里？答：中国的首都是北京。")
LOGIT_TOLERANCE = 1e-3
CLEAR_MARGIN = 0.01  # greedy must agree where the reference's best two logits differ by more


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    from nexttoken.pretrained import load

    return load(gemma3_path, dtype="float32")


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma3_path.parent, gguf_file=gemma3_path.name,
                                                dtype=torch.float32).eval()


@pytest.mark.parametrize("text", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_logits_match_transformers(gemma3, gemma3_reference, text):
    ids = gemma3.tokenizer.encode(text)
    assert len(ids) > 60
    with torch.inference_mode():
        ours = gemma3.model.head(gemma3.model.hidden_states(torch.tensor([ids])))[0]
        theirs = gemma3_reference(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)
    best_two = theirs.topk(2).values
    clear = best_two[:, 0] - best_two[:, 1] > CLEAR_MARGIN
    assert torch.equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear])


def test_the_articles_example_ranks_what_the_reference_ranks(gemma3, gemma3_reference):
    """After the bare prefix the base model does not say 北京 first (docs/models.md)."""
    ids = gemma3.encode("中国的首都是")
    ours = [c.token_id for c in gemma3.next_token_candidates(ids, k=2)]
    with torch.inference_mode():
        theirs = gemma3_reference(torch.tensor([ids])).logits[0, -1].topk(2).indices.tolist()
    assert ours == theirs
    assert [gemma3.tokenizer.token_text(i) for i in ours] == ["中国", "“"]


def test_naming_the_city_makes_beijing_first_and_it_rests_on_the_capital(gemma3):
    """中国的首都城市是 ("China's capital city is"): 北京 first, and hiding 首都 from the last position
    takes most of its probability away (docs/models.md)."""
    from nexttoken.apps.dependence import dependence

    ids = gemma3.encode("中国的首都城市是")
    best = gemma3.next_token_candidates(ids, k=2)
    assert gemma3.tokenizer.token_text(best[0].token_id) == "北京" and best[0].probability > 2 * best[1].probability
    report = dependence(gemma3.model, ids, best[0].token_id)
    assert [gemma3.tokenizer.token_text(ids[p]) for p in report.table.decisive()] == ["首都"]
