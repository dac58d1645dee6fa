"""A SentencePiece BPE vocabulary (GGUF `tokenizer.ggml.model` = "llama": Gemma, Llama 2, Mistral,
Phi-3) as a `tokenizers` BPE, splitting text as llama.cpp's SPM tokenizer does.

llama.cpp starts from single characters and repeatedly joins the adjacent pair whose joined text is
the vocabulary's best-scoring token (the leftmost among equals); a character left outside the
vocabulary becomes its UTF-8 bytes, one `<0xNN>` token each. A BPE whose merges are every way to
cut each token in two, ranked by the token's score, joins the same pairs in the same order, and
`byte_fallback` gives the same byte tokens. Spaces are written "▁" before merging.
"""

import tokenizers
from tokenizers import decoders, models, normalizers

from nexttoken.errors import NextTokenError

SPACE = "▁"  # U+2581, SentencePiece's spelling of a space inside tokens


def merges_by_score(tokens: list[str], scores: list[float], mergeable: list[bool]) -> list[tuple[str, str]]:
    """Each way to cut a mergeable token into two tokens of the vocabulary, best-scoring token first
    (then lower id, then shorter left part)."""
    ids = {token: token_id for token_id, token in enumerate(tokens)}
    ranked = []
    for token_id, token in enumerate(tokens):
        if not mergeable[token_id]:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[token_id], token_id, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def sentencepiece_bpe(tokens: list[str], scores: list[float], mergeable: list[bool], unk_id: int | None,
                      add_space_prefix: bool) -> tokenizers.Tokenizer:
    if len(scores) != len(tokens):
        raise NextTokenError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    unk_token = tokens[unk_id] if unk_id is not None else None
    model = models.BPE(vocab=vocab, merges=merges_by_score(tokens, scores, mergeable), unk_token=unk_token,
                       fuse_unk=True, byte_fallback=True)
    backend = tokenizers.Tokenizer(model)
    spaces = [normalizers.Replace(" ", SPACE)]
    # llama.cpp writes the prefix space before each stretch of text that follows a special token
    # or starts the input; `tokenizers` normalizes each stretch between added tokens alone, the same.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), *spaces] if add_space_prefix else spaces)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    return backend
