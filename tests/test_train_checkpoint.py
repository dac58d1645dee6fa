"""Checkpoints: a run stopped at any point (an exception in-process, or SIGKILL of a real process)
and resumed reaches the same losses, bit for bit in float32, as a run never stopped; a truncated
or altered checkpoint is a one-line error; a failed save leaves the previous checkpoint in charge."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_tiny import one_thread, tiny_data  # noqa: F401 (one_thread: a fixture)

from nexttoken.decoding.config import GenerationConfig
from nexttoken.errors import NextTokenError
from nexttoken.pretrained import load
from nexttoken.train import checkpoint as ckpt
from nexttoken.train.data import TokenLoader
from nexttoken.train.distributed import Process
from nexttoken.train.metrics import read_metrics
from nexttoken.train.run import recipe_with, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Process(0, 1, torch.device("cpu"))
TINY = {"d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 64, "seq_len": 16, "global_batch": 4, "micro_batch": 2,
        "lr": 3e-3, "warmup_steps": 2, "precision": "fp32", "eval_every": 4, "progress": False}
CLI_TINY = ["--d-model", "32", "--n-layer", "2", "--n-head", "4", "--d-ff", "64", "--seq-len", "16",
            "--global-batch", "4", "--micro-batch", "2", "--lr", "3e-3", "--warmup-steps", "2", "--precision", "fp32",
            "--eval-every", "4", "--no-progress"]
STEPS = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    tiny_data(folder)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("whole")
    run_recipe(recipe_with(data=data, max_steps=STEPS, checkpoint_every=3, **TINY), run_dir)
    return read_metrics(run_dir)


def losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records] + [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]


class Dies:
    """A loader that raises after `n` batches: a run interrupted in the middle of a step."""

    def __init__(self, loader: TokenLoader, n: int) -> None:
        self.loader, self.left = loader, n

    def __next__(self):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return next(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def test_resume_after_an_interruption_is_bitwise_exact(tmp_path, data, uninterrupted, monkeypatch):
    real_loader = TokenLoader

    def dying_loader(*args, **kwargs):
        return Dies(real_loader(*args, **kwargs), n=2 * 7 + 1)  # halfway through step 8; checkpoint at 6

    monkeypatch.setattr("nexttoken.train.run.TokenLoader", dying_loader)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe_with(data=data, max_steps=STEPS, checkpoint_every=3, **TINY), tmp_path)
    monkeypatch.undo()
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 6
    # a different seed would draw different weights and data order: all must come from the checkpoint
    run_recipe(recipe_with(data=data, max_steps=STEPS, checkpoint_every=3, **{**TINY, "seed": 99}), tmp_path,
               resume=True)
    assert losses(read_metrics(tmp_path)) == losses(uninterrupted)


def test_a_stopped_command_says_how_to_resume_and_its_folder_holds_its_checkpoint(tmp_path, data, monkeypatch):
    from typer.testing import CliRunner

    from nexttoken.cli import app

    real_loader = TokenLoader
    monkeypatch.setattr("nexttoken.train.run.TokenLoader",
                        lambda *args, **kwargs: Dies(real_loader(*args, **kwargs), n=5))  # in step 3
    command = ["train", "--data", str(data), "--run-dir", str(tmp_path), "--checkpoint-every", "2", *CLI_TINY]
    stopped = CliRunner().invoke(app, command)
    assert stopped.exit_code == 130 and "Traceback" not in stopped.output
    assert stopped.output == (f"stopped: the same command with --resume continues from {tmp_path}'s checkpoint "
                              f"step_00000002\n")
    # the run folder is a model folder of that checkpoint's weights, for `nexttoken generate --model`
    lm = load(tmp_path, dtype="float32")  # the saved weights as they are
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path)).model
    assert lm.model.state_dict().keys() == saved.keys()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in lm.model.state_dict().items())
    assert len(lm.generate(lm.encode("ROMEO:"), GenerationConfig(max_new_tokens=3)).token_ids) >= 1


def test_resume_after_sigkill_is_bitwise_exact(tmp_path, data, uninterrupted):
    command = [str(Path(sys.executable).parent / "nexttoken"), "train", "--data", str(data), "--run-dir", str(tmp_path),
               "--steps", str(STEPS), "--checkpoint-every", "2", *CLI_TINY]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    while process.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()
    killed_at = read_metrics(tmp_path)[-1]["step"]
    assert 5 <= killed_at < STEPS
    run_recipe(recipe_with(data=data, max_steps=STEPS, checkpoint_every=2, **TINY), tmp_path, resume=True)
    assert losses(read_metrics(tmp_path)) == losses(uninterrupted)


def test_a_resumed_run_says_where_it_starts_and_refuses_another_model(tmp_path, data, capsys):
    run_recipe(recipe_with(data=data, max_steps=3, checkpoint_every=3, **TINY), tmp_path, resume=True)
    assert capsys.readouterr().err == f"no checkpoint in {tmp_path} yet: starting at step 0\n"
    run_recipe(recipe_with(data=data, max_steps=4, checkpoint_every=3, **{**TINY, "lr": 1e-3}), tmp_path, resume=True)
    saved = tmp_path / "checkpoints" / "step_00000003"
    assert capsys.readouterr().err == (f"resuming from step 3 ({saved}); changed since: max_steps 3 -> 4, "
                                       f"lr 0.003 -> 0.001\n")
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    with pytest.raises(NextTokenError, match=r"step_00000004 was saved from a model of another shape: "
                                             r"blocks.0.attn.wo.weight is \[32, 32\] there, \[64, 64\] here"):
        run_recipe(recipe_with(data=data, max_steps=5, **{**TINY, "d_model": 64}), tmp_path, resume=True)


def test_a_new_run_does_not_replace_an_earlier_one(tmp_path, data):
    run_recipe(recipe_with(data=data, max_steps=2, **TINY), tmp_path)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(NextTokenError, match=r"already holds a run \(checkpoint step_00000002\): train into another"):
        run_recipe(recipe_with(data=data, max_steps=3, **TINY), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000002"


def save_tiny(run_dir: Path, step: int) -> Path:
    model = {"w": torch.full((4, 4), float(step))}
    optimizer = {"state": {"w": {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(4, 4)}},
                 "param_groups": [{"lr": 0.1, "betas": [0.9, 0.95], "params": ["w"]}]}
    return ckpt.save_checkpoint(run_dir, step, model, optimizer, {"step": step})


def test_checkpoint_round_trip(tmp_path):
    path = save_tiny(tmp_path, 3)
    loaded = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert loaded.path == path and loaded.state == {"step": 3}
    assert torch.equal(loaded.model["w"], torch.full((4, 4), 3.0))
    assert loaded.optimizer["param_groups"][0]["params"] == ["w"]
    assert torch.equal(loaded.optimizer["state"]["w"]["step"], torch.tensor(3.0))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00"), "SHA-256"),
    (lambda p: p.unlink(), "is missing"),
])
def test_a_damaged_checkpoint_is_a_clear_one_line_error(tmp_path, damage, message):
    path = save_tiny(tmp_path, 1)
    damage(path / ckpt.MODEL_FILE)
    with pytest.raises(NextTokenError, match=message) as error:
        ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert "\n" not in str(error.value) and "model.safetensors" in str(error.value)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_tiny(tmp_path, 1)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)  # dies after the weights were written
    with pytest.raises(OSError):
        save_tiny(tmp_path, 2)
    monkeypatch.undo()
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001" and not (tmp_path / "checkpoints" / "step_00000002").exists()
    assert ckpt.load_checkpoint(latest).state == {"step": 1}
    save_tiny(tmp_path, 2)  # the next save clears the partial folder and, once complete, the old checkpoint
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.json", "step_00000002"]


def test_a_fresh_run_replaces_stale_checkpoints_of_an_earlier_one(tmp_path):
    save_tiny(tmp_path, 400)
    save_tiny(tmp_path, 100)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000100"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.json", "step_00000100"]
