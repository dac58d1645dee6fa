"""A run's record: one JSON object per line in metrics.jsonl (training steps and evaluations), and
the loss curves drawn from it as a PNG."""

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def append_metrics(run_dir: Path, record: dict) -> None:
    with (run_dir / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the records after `step` (all of them at step 0): a resumed run logs those steps again."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))


def evaluation_metrics(loss: float, tokens_per_byte: float | None) -> dict:
    """Loss in nats per token, its perplexity, and bits per byte of text when the token/byte ratio
    is known: the figure that compares models with different tokenizers."""
    metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if tokens_per_byte is not None:
        metrics["bits_per_byte"] = loss * tokens_per_byte / math.log(2)
    return metrics


def plot_losses(run_dir: Path) -> Path:
    """Training and evaluation loss against step, saved as run_dir/loss.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if train:
        ax.plot(*zip(*train), label="training loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation loss")
    ax.set(xlabel="step", ylabel="loss (nats per token)", title=run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / PLOT_FILE, dpi=120)
    plt.close(fig)
    return run_dir / PLOT_FILE
