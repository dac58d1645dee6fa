"""Attention of the last position: parity with Hugging Face's eager attention on SmolLM2, what the model
looks at to complete "The capital of China is", the heatmap, and the `nexttoken attention` command."""

import json
import re
import struct
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nexttoken import cli
from nexttoken.apps.attention import heatmap_rows, last_token_attention, save_heatmap, split_sink, strongest_heads
from nexttoken.errors import NextTokenError

CAPITAL = "The capital of China is"
CAPITAL_PNG = "capital.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has right after its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def capital(smollm2) -> tuple[list[int], torch.Tensor]:
    ids = smollm2.encode(CAPITAL)
    return ids, last_token_attention(smollm2.model, ids)


@pytest.mark.parametrize("prompt, chat", [(CAPITAL, False), ("What is the capital of France?", True)])
def test_maps_match_reference_eager_attention(smollm2, reference_model, prompt, chat):
    ids = smollm2.encode(prompt, chat=chat)
    ours = last_token_attention(smollm2.model, ids)
    previous = reference_model.config._attn_implementation
    try:
        # Only the eager implementation forms the probabilities it can return.
        reference_model.set_attn_implementation("eager")
        with torch.inference_mode():
            attentions = reference_model(torch.tensor([ids]), output_attentions=True).attentions
    finally:
        reference_model.set_attn_implementation(previous)
    theirs = torch.stack([layer[0, :, -1, :] for layer in attentions])  # (n_layer, H, T)
    config = smollm2.model.config
    assert ours.shape == theirs.shape == (config.n_layer, config.n_head, len(ids))
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_each_row_is_a_distribution(capital):
    _, maps = capital
    assert maps.dtype == torch.float32 and (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(maps.shape[:2]))


def test_what_the_last_position_looks_at(smollm2, capital):
    ids, maps = capital
    texts = [smollm2.tokenizer.decode([i]) for i in ids]
    assert texts == ["The", " capital", " of", " China", " is"]
    mean = maps.mean(dim=(0, 1))  # (T,)
    # The first token is an attention sink: most heads park most of their weight there.
    assert mean.argmax().item() == 0 and mean[0] > 0.5
    # Past the sink, the last position attends most to itself, then to " China"; " capital" comes last
    # on average, because only a few heads look at it.
    after_sink = [texts[p] for p in mean[1:].argsort(descending=True).add(1).tolist()]
    assert after_sink == [" is", " China", " of", " capital"]
    # In the last third of the layers, where the answer forms, " China" leads everything but the sink.
    late = maps[2 * len(maps) // 3:].mean(dim=(0, 1))  # (T,)
    assert late[1:].argmax().item() + 1 == texts.index(" China")
    # Some heads each put most of their weight on one of the two words the answer needs.
    assert maps[:, :, texts.index(" China")].max() > 0.8
    assert maps[:, :, texts.index(" capital")].max() > 0.8


def test_the_sink_apart(capital):
    _, maps = capital
    sink, rest = split_sink(maps)
    assert torch.equal(sink, maps[:, :, 0])
    assert (rest[:, :, 0] == 0).all()
    torch.testing.assert_close(rest.sum(dim=-1), torch.ones(maps.shape[:2]))
    torch.testing.assert_close(rest[:, :, 1:] * (1 - sink).unsqueeze(-1), maps[:, :, 1:])
    sink, rest = split_sink(torch.tensor([[1.0], [0.5]]))  # one token: nothing is left past it
    assert sink.tolist() == [1.0, 0.5] and rest.tolist() == [[0.0], [0.0]]


def test_strongest_heads_look_at_the_positions_asked(smollm2, capital):
    ids, maps = capital
    china = [smollm2.tokenizer.decode([i]) for i in ids].index(" China")
    heads = strongest_heads(maps, [china], 3)
    _, rest = split_sink(maps)
    assert [rest[h.layer, h.head, china].item() for h in heads] == rest[:, :, china].flatten().topk(3).values.tolist()
    assert all(max(h.weights) == h.weights[china] for h in heads)
    assert heads[0].sink == maps[heads[0].layer, heads[0].head, 0].item()


def test_heatmap_rows_average_heads_or_pick_one(capital):
    _, maps = capital
    assert torch.equal(heatmap_rows(maps, None), maps.mean(dim=1))
    assert torch.equal(heatmap_rows(maps, 4), maps[:, 4])
    for head in (-1, maps.shape[1]):
        with pytest.raises(NextTokenError, match=r"^there is no head -?\d+: this model's heads are numbered 0 to 8$"):
            heatmap_rows(maps, head)


def test_heatmap_png(smollm2, capital, tmp_path):
    ids, maps = capital
    labels = [smollm2.tokenizer.decode([i]) for i in ids]
    save_heatmap(heatmap_rows(maps), labels, tmp_path / "mean.png", "mean")
    save_heatmap(heatmap_rows(maps, 4), labels, tmp_path / "head.png", "head 4")
    width, height = png_size(tmp_path / "mean.png")
    assert 400 <= width <= 2000 and 10 * len(maps) <= height <= 2000
    assert (tmp_path / "mean.png").read_bytes() != (tmp_path / "head.png").read_bytes()
    assert 5_000 < (tmp_path / "mean.png").stat().st_size < 1_000_000


def test_heatmap_widens_with_the_prompt(tmp_path):
    for n_tokens in (10, 60):
        rows = torch.rand(4, n_tokens).softmax(dim=-1)
        save_heatmap(rows, [f"t{i}\n" for i in range(n_tokens)], tmp_path / f"{n_tokens}.png", "random")
    assert png_size(tmp_path / "60.png")[0] > png_size(tmp_path / "10.png")[0] + 1000


@pytest.mark.parametrize("name", ["attention.jpg", "attention"])
def test_heatmap_must_be_png(tmp_path, name):
    with pytest.raises(NextTokenError, match="give a path ending in .png"):
        save_heatmap(torch.ones(2, 3) / 3, ["a", "b", "c"], tmp_path / name, "title")
    assert not (tmp_path / name).exists()


@pytest.fixture
def run(smollm2, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "load", lambda path, dtype, quantize, compiled, draft: smollm2)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(cli.app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    return invoke


def test_command_writes_the_heatmap_and_the_knockout_table(run, tmp_path):
    path = tmp_path / "capital.png"
    output = run("attention", CAPITAL, "--output", str(path))
    assert f"heatmap written to {path}" in output
    png_size(path)
    assert "P(' Beijing') = 0.540 with every token" in output
    rows = [line for line in output.splitlines() if "│" in line and "'" in line]
    # the table is sorted, the most damaging knockout first; then the baseline comes back in the layers
    assert "' China'" in rows[0] and "0.000" in rows[0]
    assert "' of'" in rows[3] and "0.310" in rows[3]
    assert "heads that look most at ' capital', ' China' past the first token" in " ".join(output.split())


def test_command_json(run):
    report = json.loads(run("attention", CAPITAL, "--json", "-o", CAPITAL_PNG))
    assert report["target"]["text"] == " Beijing" and report["target"]["p"] == pytest.approx(0.54, abs=0.005)
    assert [k["text"] for k in report["knockout"]] == [" China", "The", " capital", " of"]
    assert [k["position"] for k in report["knockout"]] == [3, 0, 1, 2]
    assert report["knockout"][0]["p"] < 0.001 and report["knockout"][-1]["p"] == pytest.approx(0.31, abs=0.005)
    assert report["decisive"] == [1, 3] and len(report["sink_share"]) == 30
    assert all(0 <= share <= 1 for share in report["sink_share"])
    assert len(report["heads"]) == 5
    head = report["heads"][0]
    assert set(head) == {"layer", "head", "sink", "weights"} and len(head["weights"]) == 5 and head["weights"][0] == 0


def test_command_given_target(run, tmp_path):
    report = json.loads(run("attention", "The capital of France is", "--target", " Paris", "--json", "-o", CAPITAL_PNG))
    assert report["target"]["text"] == " Paris" and report["target"]["p"] == pytest.approx(0.773, abs=0.005)
    without = {k["text"]: k["p"] for k in report["knockout"]}
    assert without[" France"] < 0.005 and without[" of"] > 0.2


def test_command_target_split_uses_its_first_token(smollm2, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "load", lambda path, dtype, quantize, compiled, draft: smollm2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nexttoken", "attention", CAPITAL, "--target", " Beijing city", "--json"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == "note: the target ' Beijing city' is 2 tokens; measuring its first, ' Beijing'"
    assert json.loads(captured.out)["target"]["text"] == " Beijing"


def test_command_default_path_and_one_head(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("attention", CAPITAL)
    run("attention", CAPITAL, "--head", "4", "--output", "head.png")
    assert (tmp_path / "attention.png").read_bytes() != (tmp_path / "head.png").read_bytes()


@pytest.mark.parametrize("args, message", [
    (("--head", "9"), "error: there is no head 9: this model's heads are numbered 0 to 8"),
    (("--output", "map.svg"), "error: the heatmap is written as a PNG image: give a path ending in .png, not 'map.svg'"),
    (("--target", ""), "error: the target is empty: give the text of the next token to measure, as in ' Beijing'"),
])
def test_command_mistakes_are_one_line_errors(smollm2, monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.setattr(cli, "load", lambda path, dtype, quantize, compiled, draft: smollm2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nexttoken", "attention", CAPITAL, *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prompt, message", [
    ("", "error: the prompt is empty: give at least one token for the model to continue"),
    ("word " * 9000, r"error: the prompt has \d+ tokens, more than the model's context window of 8192"),
])
def test_command_bad_prompts_are_one_line_errors(smollm2, monkeypatch, capsys, tmp_path, prompt, message):
    monkeypatch.setattr(cli, "load", lambda path, dtype, quantize, compiled, draft: smollm2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nexttoken", "attention", prompt])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    assert re.fullmatch(message, capsys.readouterr().err.strip())
