"""How a byte-level BPE vocabulary cuts text into words before merging, by the name a GGUF file
gives in `tokenizer.ggml.pre`: the split patterns llama.cpp applies for each name
(llama-vocab.cpp), so the ids match what llama.cpp feeds the model.

Each pattern is applied in turn to every piece the ones before it left, and both the matches and
the text between them become pieces; then each piece's bytes are respelled as characters.
"""

from collections.abc import Callable
from functools import partial

from tokenizers import Regex, pre_tokenizers

from nexttoken.errors import NextTokenError

GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
EACH_NUMBER_CHARACTER = r"\p{N}"
PUNCTUATION_RUNS = r"[\p{P}\$\+<=>\^~\|]+"
NUMBER_RUNS = r"\p{N}+"
DIGIT_TRIPLES = r"[0-9][0-9][0-9]"

# Llama 3's (GPT-4's) split: English contractions in either case, a letter run with at most one
# leading non-letter, numbers of at most three digits, punctuation runs with their line ends.
LLAMA3_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 2's: Llama 3's with every digit its own word.
QWEN2_WORDS = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral's Tekken: a word is an optional capitalised start then lower-case letters (camelCase
# splits), single digits, punctuation runs that keep trailing slashes and line ends.
TEKKEN_WORDS = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek-V3 and R1: numbers of at most three digits, runs of CJK ideographs and kana apart.
DEEPSEEK3_NUMBERS = r"\p{N}{1,3}"
DEEPSEEK3_CJK = r"[一-龥぀-ゟ゠-ヿ]+"
DEEPSEEK3_WORDS = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                   r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def split_then_map_bytes(*patterns: str) -> pre_tokenizers.PreTokenizer:
    splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in patterns]
    # use_regex=False: the splits have cut the words already; this only respells bytes as characters.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, byte_level])


def names(*aliases: str, make: Callable[[], pre_tokenizers.PreTokenizer]) -> dict[str, Callable[[], pre_tokenizers.PreTokenizer]]:
    return dict.fromkeys(aliases, make)


# The first name of a split is the one a tokenizer trained here is exported under (train/export.py).
PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    # llama.cpp's fallback, also used when a file names none. It is not the plain GPT-2 split.
    **names("default", make=partial(split_then_map_bytes, PUNCTUATION_RUNS, GPT2_WORDS, NUMBER_RUNS, DIGIT_TRIPLES)),
    **names("gpt-2", "mpt", "olmo", "phi-2", "jais", "roberta-bpe", make=partial(split_then_map_bytes, GPT2_WORDS)),
    **names("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
            make=partial(split_then_map_bytes, EACH_NUMBER_CHARACTER, GPT2_WORDS)),
    **names("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe", "chatglm-bpe",
            make=partial(split_then_map_bytes, LLAMA3_WORDS)),
    **names("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", make=partial(split_then_map_bytes, QWEN2_WORDS)),
    **names("deepseek-v3", make=partial(split_then_map_bytes, DEEPSEEK3_NUMBERS, DEEPSEEK3_CJK, DEEPSEEK3_WORDS)),
    **names("tekken", make=partial(split_then_map_bytes, TEKKEN_WORDS)),
    **names("falcon", make=partial(split_then_map_bytes, r"[\p{P}\$\+<=>\^~\|`]+", GPT2_WORDS, DIGIT_TRIPLES)),
}


def pre_tokenizer_named(name: str) -> pre_tokenizers.PreTokenizer:
    if name not in PRE_TOKENIZERS:
        supported = ", ".join(sorted(PRE_TOKENIZERS))
        raise NextTokenError(f"tokenizer.ggml.pre {name!r} is not supported (supported: {supported})")
    return PRE_TOKENIZERS[name]()
