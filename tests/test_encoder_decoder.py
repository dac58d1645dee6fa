"""The encoder-decoder configuration of the core (T5 v1.0, T5 v1.1, BART) against Hugging Face
transformers on tiny random checkpoints: logits under teacher forcing, greedy decoding and beam
search through nexttoken.decoding, the text-to-text wrapper, and bad input."""

import pytest
import tokenizers
import torch
from tokenizers import models, pre_tokenizers, processors

from nexttoken.apps.seq2seq import Seq2SeqModel
from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.errors import NextTokenError
from nexttoken.loaders.safetensors import load_hf_model, load_hf_seq2seq

VOCAB = 120
WORDS = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(3, VOCAB)]  # T5's special ids: pad 0, eos 1


def t5_config(**overrides):
    from transformers import T5Config

    return T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, n_positions=40, **overrides)


def build(name):
    """A tiny random Hugging Face model of each kind: T5 v1.0 (ReLU, tied head, a decoder deeper
    than its encoder), T5 v1.1 (gated GELU, a head of its own) and BART (scaled embeddings)."""
    from transformers import BartConfig, BartForConditionalGeneration, T5ForConditionalGeneration

    if name == "t5-v1.0":
        return T5ForConditionalGeneration(t5_config(feed_forward_proj="relu", num_decoder_layers=3))
    if name == "t5-v1.1":
        model = T5ForConditionalGeneration(t5_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False))
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
        return model
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40,
                        scale_embedding=True, dropout=0.0, pad_token_id=0, bos_token_id=3, eos_token_id=1,
                        decoder_start_token_id=1, forced_eos_token_id=None, forced_bos_token_id=None)
    model = BartForConditionalGeneration(config)
    model.final_logits_bias.normal_()
    return model


def word_tokenizer() -> tokenizers.Tokenizer:
    """A word-level tokenizer over WORDS that ends each source with </s>, as T5's does."""
    tokenizer = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tokenizer


@pytest.fixture(scope="module", params=["t5-v1.0", "t5-v1.1", "bart"])
def pair(request, tmp_path_factory):
    """(reference model, our model, folder) for one kind."""
    torch.manual_seed(0)
    reference = build(request.param).eval()
    folder = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(folder)
    word_tokenizer().save(str(folder / "tokenizer.json"))
    ours, _ = load_hf_seq2seq(folder)
    return reference, ours, folder


def sources():
    """Two sources, the second right-padded: ids (2, 12) and mask."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12), generator=generator)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    return ids.masked_fill(~mask, 0), mask


def reference_sequences(reference, ids, mask, **settings):
    """transformers' generate, each sequence without its start token and cut at its end token."""
    out = reference.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, use_cache=False,
                             no_repeat_ngram_size=0, output_scores=True, return_dict_in_generate=True, **settings)
    eos = reference.config.eos_token_id
    found = []
    for row in out.sequences[:, 1:].tolist():
        found.append(row[: row.index(eos)] if eos in row else row)
    return found, out


def test_logits_match_transformers(pair):
    reference, ours, _ = pair
    ids, mask = sources()
    targets = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    targets[:, 0] = reference.config.decoder_start_token_id
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=targets).logits
        got = ours(ids, targets, mask)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_greedy_matches_generate(pair):
    reference, ours, _ = pair
    ids, mask = sources()
    expected, _ = reference_sequences(reference, ids, mask, max_new_tokens=10, num_beams=1)
    start, eos = reference.config.decoder_start_token_id, reference.config.eos_token_id
    results = generate_batch(ours.bind(ids, mask), word_tokenizer(),
                             [[start]] * 2, [eos], GenerationConfig(max_new_tokens=10), pad_id=0)
    assert [c.token_ids for row in results for c in row] == expected


def test_beam_search_matches_generate(pair):
    reference, ours, _ = pair
    ids, mask = sources()
    settings = dict(max_new_tokens=8, num_beams=4, num_return_sequences=3, length_penalty=0.7)
    expected, out = reference_sequences(reference, ids, mask, **settings)
    start, eos = reference.config.decoder_start_token_id, reference.config.eos_token_id
    results = generate_batch(ours.bind(ids, mask), word_tokenizer(),
                             [[start]] * 2, [eos], GenerationConfig(**settings), pad_id=0)
    completions = [c for row in results for c in row]
    assert [c.token_ids for c in completions] == expected
    torch.testing.assert_close(torch.tensor([c.score for c in completions]), out.sequences_scores, atol=1e-4, rtol=0)


def test_text_to_text_matches_generate(pair):
    reference, _, folder = pair
    model = Seq2SeqModel.load(folder)
    texts = ["w5 w17 w9 w44", "w100 w3"]
    ids, mask = (torch.tensor([[5, 17, 9, 44, 1], [100, 3, 1, 0, 0]]),
                 torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))
    expected, _ = reference_sequences(reference, ids, mask, max_new_tokens=6)
    completions = model.generate_batch(texts, GenerationConfig(max_new_tokens=6))
    assert [c[0].text for c in completions] == [" ".join(WORDS[i] for i in row if i > 2) for row in expected]
    assert model.generate(texts[1], GenerationConfig(max_new_tokens=6)).token_ids == expected[1]


def test_banned_text_is_never_written_as_transformers_bans_words(pair):
    """ban_text reads the encoder-decoder's own tokenizer: the same tokens as `bad_words_ids`."""
    reference, _, folder = pair
    model = Seq2SeqModel.load(folder)
    text = "w5 w17 w9 w44"
    free = model.generate(text, GenerationConfig(max_new_tokens=6)).token_ids
    banned = WORDS[free[1]]  # the second token greedy decoding writes
    ids = torch.tensor([model.encode(text)])
    expected, _ = reference_sequences(reference, ids, torch.ones_like(ids, dtype=torch.bool), max_new_tokens=6,
                                      bad_words_ids=[[free[1]]])
    got = model.generate(text, GenerationConfig(max_new_tokens=6, sampling=SamplingConfig(ban_text=(banned,)))).token_ids
    assert got == expected[0] and free[1] not in got


def test_bad_sources_are_one_line_errors(pair):
    _, ours, folder = pair
    model = Seq2SeqModel.load(folder)
    with pytest.raises(NextTokenError, match="source text is empty"):
        model.generate("  ")
    with pytest.raises(NextTokenError, match="more than the model's maximum of 40"):
        model.generate(" ".join(["w7"] * 40))  # 40 words and </s>
    with pytest.raises(NextTokenError, match="a source is empty"):
        ours.bind(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[True] * 3, [False] * 3]))


def test_decoder_only_loader_refuses_an_encoder_decoder(pair):
    _, _, folder = pair
    with pytest.raises(NextTokenError, match="is an encoder-decoder"):
        load_hf_model(folder)


@pytest.mark.parametrize("dim", [16, 7])
def test_sinusoidal_positions_match_marian(dim):
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    from nexttoken.model.layers import sinusoidal_table

    expected = MarianSinusoidalPositionalEmbedding(50, dim).create_weight()
    torch.testing.assert_close(sinusoidal_table(50, dim), expected, atol=1e-6, rtol=0)


def test_joined_caches_decode_as_separate_ones(pair):
    """Continuous batching: a cache joined from two bound batches (sources of different lengths)
    gives each row the scores it gets alone."""
    _, ours, _ = pair
    ids, mask = sources()
    start = torch.full((1, 1), ours.config.vocab_size - 1)
    steps = torch.tensor([[5], [9]])
    alone = []
    for row in range(2):
        width = int(mask[row].sum())
        bound = ours.bind(ids[row : row + 1, :width])
        cache = bound.new_cache(1, 4)
        bound.hidden_states(start, cache)
        alone.append(bound.head(bound.hidden_states(steps[row : row + 1], cache)))
    first, second = ours.bind(ids[:1]), ours.bind(ids[1:2, :7])
    cache = first.new_cache(1, 4)
    first.hidden_states(start, cache)
    other = second.new_cache(1, 4)
    second.hidden_states(start, other)
    cache.join(other)
    together = first.head(first.hidden_states(steps, cache))
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)


def test_cli_turns_text_into_text(pair):
    from typer.testing import CliRunner

    from nexttoken.cli import app

    _, _, folder = pair
    expected = Seq2SeqModel.load(folder).generate_batch(["w5 w6 w7"], GenerationConfig(
        max_new_tokens=5, num_beams=3, num_return_sequences=2))[0]
    result = CliRunner().invoke(app, ["seq2seq", str(folder), "w5 w6 w7", "--max-new-tokens", "5", "--beams", "3",
                                      "--num-return-sequences", "2"])
    assert result.exit_code == 0, result.output
    assert result.output == "".join(c.text + "\n" for c in expected)
    failed = CliRunner().invoke(app, ["seq2seq", str(folder), " "])
    assert failed.exit_code == 1 and isinstance(failed.exception, NextTokenError)


def test_stored_copies_of_the_embeddings_are_ignored_and_strangers_refused(pair, tmp_path):
    """Older checkpoints store the shared embeddings again for each side; those load as if absent.
    A tensor no table names is refused with a one-line error."""
    import shutil

    import safetensors.torch

    _, ours, folder = pair
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    prefix = "model." if "model.shared.weight" in tensors else ""
    shared = tensors[f"{prefix}shared.weight"]
    tensors |= {f"{prefix}{side}.embed_tokens.weight": shared.clone() for side in ("encoder", "decoder")}
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    safetensors.torch.save_file(tensors, tmp_path / "model.safetensors")
    again, _ = load_hf_seq2seq(tmp_path)
    ids, mask = sources()
    targets = torch.tensor([[0, 7, 8], [0, 9, 10]])
    torch.testing.assert_close(again(ids, targets, mask), ours(ids, targets, mask), atol=0, rtol=0)
    safetensors.torch.save_file(tensors | {"stray.weight": shared.clone()}, tmp_path / "model.safetensors")
    with pytest.raises(NextTokenError, match="unexpected tensors .*stray.weight"):
        load_hf_seq2seq(tmp_path)


@pytest.mark.parametrize("bump, settings", [(3.5, dict(num_beams=1, min_new_tokens=3)),
                                             (2.0, dict(num_beams=4, num_return_sequences=3, length_penalty=0.7))])
def test_end_tokens_stop_rows_as_in_generate(bump, settings, tmp_path):
    """A BART whose end token is made likely: rows and beams end at different lengths, at the same
    steps as transformers' (min_new_tokens holds the end token back for the first steps)."""
    from nexttoken.decoding.config import SamplingConfig

    torch.manual_seed(0)
    reference = build("bart").eval()
    with torch.no_grad():
        reference.final_logits_bias[0, 1] += bump
    reference.save_pretrained(tmp_path)
    ours, _ = load_hf_seq2seq(tmp_path)
    ids, mask = sources()
    expected, _ = reference_sequences(reference, ids, mask, max_new_tokens=10, **settings)
    min_new_tokens = settings.pop("min_new_tokens", 0)
    config = GenerationConfig(max_new_tokens=10, sampling=SamplingConfig(min_new_tokens=min_new_tokens), **settings)
    completions = [c for row in generate_batch(ours.bind(ids, mask), word_tokenizer(), [[1]] * 2, [1], config)
                   for c in row]
    assert [c.token_ids for c in completions] == expected
    assert {c.finish_reason for c in completions} == {"eos"}
    lengths = {len(c.token_ids) for c in completions}
    assert lengths == {min_new_tokens} if min_new_tokens else len(lengths) > 1
