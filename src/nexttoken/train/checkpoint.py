"""Checkpoints that survive a kill at any moment: weights as safetensors, optimiser state as a
`torch.save` of tensors (read back with weights_only=True), the training state (step, data
position, random number generator states) as JSON, and a manifest of every file's size and SHA-256.

A checkpoint is written into a temporary folder, each file flushed to disk (fsync), and only then
renamed into place; `latest.json`, replaced the same way, names the newest complete one. Older
checkpoints are deleted only after that, so a kill leaves either the old or the new checkpoint whole.
A file that is truncated or altered afterwards fails the manifest check with a one-line error."""

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from nexttoken.errors import NextTokenError

FOLDER = "checkpoints"
LATEST = "latest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
MANIFEST = "manifest.json"
TEMPORARY_PREFIX = ".partial-"


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict  # {"state": {parameter name: {tensor name: tensor}}, "param_groups": [...]}
    state: dict  # the training state, as saved
    path: Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, value: dict) -> None:
    tmp = path.with_name(TEMPORARY_PREFIX + path.name)
    tmp.write_text(json.dumps(value, indent=1))
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def separate_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory or are not contiguous: a state dict may hold
    views, and a tied table twice (an encoder-decoder's shared embeddings); each gets its own copy."""
    seen, tensors = set(), {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        tensors[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
        seen.add(tensor.data_ptr())
    return tensors


def save_checkpoint(run_dir: str | Path, step: int, model: dict[str, torch.Tensor], optimizer: dict,
                    state: dict, keep: int = 1) -> Path:
    """Write the checkpoint of `step` under run_dir/checkpoints, make it the latest, then keep only
    the newest `keep` checkpoints."""
    root = Path(run_dir) / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp, final = root / (TEMPORARY_PREFIX + name), root / name
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
    tmp.mkdir()
    safetensors.torch.save_file(separate_tensors(model), tmp / MODEL_FILE)
    # the tensors go to torch.save; the rest (hyperparameters of each group) is plain JSON
    torch.save({"state": optimizer["state"]}, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({**state, "param_groups": optimizer["param_groups"]}, indent=1))
    files = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
    for file in files:
        fsync(tmp / file)
    manifest = {file: {"bytes": (tmp / file).stat().st_size, "sha256": sha256(tmp / file)} for file in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fsync(tmp / MANIFEST)
    fsync(tmp)
    if final.exists():  # complete but never made the latest: a run killed between the two renames
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync(root)
    write_json_atomically(root / LATEST, {"checkpoint": name, "step": step})
    others = sorted(p for p in root.glob("step_*") if p != final)
    earlier = [p for p in others if p.name < name]
    later = [p for p in others if p.name > name]  # left by an earlier run in this folder, now stale
    for old in later + earlier[:max(0, len(earlier) - (keep - 1))]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    latest = Path(run_dir) / FOLDER / LATEST
    if not latest.exists():
        return None
    try:
        name = json.loads(latest.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise NextTokenError(f"{latest}: corrupt (not the JSON a checkpoint pointer holds)") from None
    path = latest.parent / name
    if not path.is_dir():
        raise NextTokenError(f"{latest} names {name}, which does not exist")
    return path


def verify(path: Path) -> None:
    """Every file of a checkpoint has the size and SHA-256 its manifest records."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise NextTokenError(f"{path}: corrupt checkpoint, its {MANIFEST} is missing or unreadable") from None
    for file, expected in manifest.items():
        target = path / file
        if not target.is_file():
            raise NextTokenError(f"{path}: corrupt checkpoint, {file} is missing")
        size = target.stat().st_size
        if size != expected["bytes"]:
            raise NextTokenError(f"{path}: corrupt checkpoint, {file} has {size} bytes where "
                                 f"{expected['bytes']} were written (truncated?)")
        if sha256(target) != expected["sha256"]:
            raise NextTokenError(f"{path}: corrupt checkpoint, {file} does not match its SHA-256")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A verified checkpoint folder, read onto the CPU."""
    path = Path(path)
    verify(path)
    state = json.loads((path / STATE_FILE).read_text())
    optimizer = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    optimizer["param_groups"] = state.pop("param_groups")
    return Checkpoint(safetensors.torch.load_file(path / MODEL_FILE), optimizer, state, path)


def rng_state() -> dict:
    """This process's random number generators as JSON values: torch (CPU, and CUDA when present),
    numpy's global generator and Python's `random`."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state().tolist(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))
