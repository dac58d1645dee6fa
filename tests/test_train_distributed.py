"""The same `nexttoken train` under torchrun (two CPU processes, gloo) trains as one process does with
the same global batch: DDP and FSDP2, eager and with compiled blocks, on one node or on two, give the
losses of a single process accumulating over both halves, up to float32 reduction order."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_tiny import one_thread, tiny_data, tiny_texts  # noqa: F401 (one_thread: a fixture)

from nexttoken.train.checkpoint import latest_checkpoint, load_checkpoint
from nexttoken.train.metrics import read_metrics
from nexttoken.train.run import recipe_with, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4
TINY = {"d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 64, "seq_len": 16, "global_batch": 8, "micro_batch": 2,
        "lr": 1e-2, "warmup_steps": 1, "precision": "fp32", "eval_every": 2, "checkpoint_every": STEPS,
        "max_steps": STEPS, "progress": False}
# float32 sums in another order differ in the last bits; Adam's normalised steps carry that into
# the weights, so later steps may differ a little more than the first
TOLERANCE = 1e-4
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    tiny_data(folder)
    return folder


@pytest.fixture(scope="module")
def alone(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("alone")
    run_recipe(recipe_with(data=data, **TINY), run_dir)
    return run_dir


def train_command(data: Path | None, run_dir: Path, strategy: str, launch: list[str], *extra: str,
                  steps: int = STEPS) -> list[str]:
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k not in ("max_steps", "progress")]
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--no-python",
            str(Path(sys.executable).parent / "nexttoken"), "train", *(("--data", str(data)) if data else ()),
            "--run-dir", str(run_dir),
            "--steps", str(steps), "--strategy", strategy, "--no-progress", *options, *extra]


def torchrun(data: Path, run_dir: Path, strategy: str, *extra: str, steps: int = STEPS) -> None:
    command = train_command(data, run_dir, strategy, ["--nproc_per_node", "2"], *extra, steps=steps)
    done = subprocess.run(command, env=ONE_THREAD, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_trains_as_one(run_dir: Path, alone: Path) -> None:
    ours, reference = read_metrics(run_dir), read_metrics(alone)
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    for a, b in zip(ours, reference):
        assert a["tokens"] == b["tokens"]  # the same global batch: 8 sequences of 16
        assert a["loss"] == pytest.approx(b["loss"], rel=TOLERANCE)
        assert a.get("eval_loss", 0.0) == pytest.approx(b.get("eval_loss", 0.0), rel=TOLERANCE)
    assert ours[0]["loss"] != ours[-1]["loss"]  # it did train
    # only rank 0 wrote, and the checkpoint holds the whole model and optimiser state
    saved = load_checkpoint(latest_checkpoint(run_dir))
    single = load_checkpoint(latest_checkpoint(alone))
    assert saved.state["world_size"] == 2 and len(saved.state["data"]) == 2
    assert saved.model.keys() == single.model.keys()
    assert all(saved.model[k].shape == single.model[k].shape for k in single.model)
    assert saved.optimizer["state"].keys() == single.optimizer["state"].keys()
    assert json.loads((run_dir / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize(("strategy", "extra"), [("ddp", ()), ("fsdp", ()), ("ddp", ("--compile",)),
                                                   ("fsdp", ("--compile",))],
                         ids=["ddp", "fsdp", "ddp-compiled", "fsdp-compiled"])
def test_two_processes_train_as_one(tmp_path, data, alone, strategy, extra):
    torchrun(data, tmp_path, strategy, *extra)
    assert_trains_as_one(tmp_path, alone)


def two_nodes(data: Path | None, run_dirs: tuple[Path, Path], *extra: str) -> list[subprocess.CompletedProcess]:
    """Two launchers of one process each, as on two machines, meeting at node 0's address; their
    errors are kept beside the first run folder."""
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                  "--master_port", str(free_port())]
    commands = [train_command(data, run_dir, "ddp", [*rendezvous, "--node_rank", str(rank)], *extra)
                for rank, run_dir in enumerate(run_dirs)]
    logs = [run_dirs[0].parent / f"node{rank}.log" for rank in (0, 1)]  # files: a full pipe would stall a node
    with logs[0].open("w") as log0, logs[1].open("w") as log1:
        nodes = [subprocess.Popen(command, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=log)
                 for command, log in zip(commands, (log0, log1))]
        codes = [node.wait(timeout=600) for node in nodes]
    return [subprocess.CompletedProcess(node.args, code, None, log.read_text())
            for node, code, log in zip(nodes, codes, logs)]


def test_two_nodes_train_as_one(tmp_path, data, alone):
    """The run folder is shared, as a cluster's shared filesystem would be."""
    nodes = two_nodes(data, (tmp_path / "run", tmp_path / "run"))
    assert [node.returncode for node in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    assert_trains_as_one(tmp_path / "run", alone)


def test_nodes_that_see_different_checkpoints_stop_at_once(tmp_path, data):
    """A resume where one node lacks the run's checkpoint would start the processes at different
    steps, where they would wait for each other forever."""
    torchrun(data, tmp_path / "shared", "ddp", steps=2)
    nodes = two_nodes(data, (tmp_path / "shared", tmp_path / "elsewhere"), "--resume")
    assert [node.returncode for node in nodes] == [1, 1]
    message = (f"error: the processes see different checkpoints in {tmp_path / 'shared'} (rank 0: step_00000002, "
               f"rank 1: none): every node must see the same run folder")
    assert message in nodes[0].stderr


def test_a_sharded_run_resumes_as_one_process_does(tmp_path, data):
    """Stopped after its first checkpoint and resumed, FSDP2 reloads each rank's shard of the weights
    and of Adam's moments: its later steps follow a single process resumed the same way (which
    test_train_checkpoint holds to a run never stopped)."""
    single = tmp_path / "single"
    for steps in (2, STEPS):
        run_recipe(recipe_with(data=data, **{**TINY, "max_steps": steps}), single, resume=steps == STEPS)
        torchrun(data, tmp_path / "sharded", "fsdp", *(("--resume",) if steps == STEPS else ()), steps=steps)
    ours, reference = read_metrics(tmp_path / "sharded"), read_metrics(single)
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in reference], rel=TOLERANCE)


def test_nodes_that_do_not_see_the_prepared_data_stop_at_once(tmp_path):
    """The main process prepares the corpus into its run folder; a node whose run folder is another
    would find nothing there."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_texts(4)))
    nodes = two_nodes(None, (tmp_path / "shared", tmp_path / "elsewhere"), "--file", str(corpus), "--vocab-size", "300")
    assert [node.returncode for node in nodes] == [1, 1]
    assert (f"error: {tmp_path / 'shared' / 'data'}: no prepared data on rank 1 (every node must see the same "
            f"folder; nexttoken prepare-data prepares one)") in nodes[0].stderr
