"""The loop's arithmetic: the schedule, the next-token objective, gradient accumulation, and that a
tiny model can fit a small batch."""

import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from train_tiny import Repeat, one_thread  # noqa: F401 (a fixture)

from nexttoken.config import ModelConfig
from nexttoken.errors import NextTokenError
from nexttoken.model.transformer import Transformer
from nexttoken.train.distributed import Process
from nexttoken.train.initialization import init_weights
from nexttoken.train.loop import TrainConfig, make_optimizer, train, train_step
from nexttoken.train.objectives import IGNORE, counted_token_loss, next_token_loss
from nexttoken.train.schedule import learning_rate

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Process(0, 1, torch.device("cpu"))
CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=32)


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return init_weights(Transformer(CONFIG), CONFIG.n_layer)


def random_batch(n: int, t: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    tokens = torch.randint(0, CONFIG.vocab_size, (n, t + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens[:, :-1].clone(), "targets": tokens[:, 1:].clone()}


def test_schedule_warms_up_linearly_then_decays_as_a_cosine():
    lr = [learning_rate(s, peak=1.0, floor=0.1, warmup_steps=4, total_steps=14) for s in range(16)]
    assert lr[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lr[4] == 1.0 and lr[14] == lr[15] == 0.1
    assert lr[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway down
    assert all(a >= b for a, b in itertools.pairwise(lr[4:]))


def test_next_token_loss_counts_only_real_targets():
    model = tiny_model()
    batch = random_batch(2)
    batch["targets"][1, 10:] = IGNORE
    loss, n_tokens = next_token_loss(model, batch)
    logits = model(batch["input_ids"])
    keep = batch["targets"] != IGNORE
    expected = F.cross_entropy(logits[keep], batch["targets"][keep])
    assert n_tokens == 16 + 10
    torch.testing.assert_close(loss, expected)


def test_counted_token_loss_is_next_token_loss_with_the_head_where_targets_count():
    batch = random_batch(2)
    batch["targets"][0, :12] = IGNORE  # a prompt
    batch["targets"][1, :5] = batch["targets"][1, 9:] = IGNORE
    batch["attention_mask"] = torch.ones(2, 16, dtype=torch.bool)
    batch["attention_mask"][1, 13:] = False  # padding
    losses, grads = [], []
    for objective in (next_token_loss, counted_token_loss):
        model = tiny_model()
        loss, n_tokens = objective(model, batch)
        loss.backward()
        losses.append((loss, n_tokens))
        grads.append([p.grad for p in model.parameters()])
    assert losses[0][1] == losses[1][1] == 4 + 4
    torch.testing.assert_close(losses[1][0], losses[0][0])
    for counted, every in zip(*grads):
        torch.testing.assert_close(counted, every)


@pytest.mark.parametrize("shape, n_counted", [((4, 200), 300), ((2, 16), 8), ((4, 128), 512), ((3, 100), 0)])
def test_the_head_runs_on_counted_rows_rounded_up_with_rows_that_do_not_count(shape, n_counted):
    from nexttoken.train.objectives import HEAD_ROWS_MULTIPLE, head_rows

    counted = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    counted[torch.randperm(counted.numel(), generator=torch.Generator().manual_seed(0))[:n_counted]] = True
    counted = counted.view(shape)
    rows = head_rows(counted)
    assert (rows & counted).equal(counted)  # every counted position is a row
    n_rows = int(rows.sum())
    assert n_rows % HEAD_ROWS_MULTIPLE == 0 or n_rows == counted.numel()
    assert n_rows - n_counted < HEAD_ROWS_MULTIPLE


def test_initial_loss_is_near_uniform():
    loss, _ = next_token_loss(tiny_model(), random_batch(4))
    assert abs(loss.item() - math.log(CONFIG.vocab_size)) < 0.1


def test_gradient_accumulation_matches_one_big_batch():
    """Accumulating 4 micro-batches of 2 gives the step that one batch of 8 gives (float32). Plain
    SGD makes the step proportional to the gradient (Adam's first step is nearly its sign, which
    would hide or magnify differences in gradients close to zero)."""
    batch = random_batch(8)
    config = TrainConfig(global_batch=8, micro_batch=8, precision="fp32")
    big, small = tiny_model(), tiny_model()
    big_loss, big_norm, _ = train_step(big, [batch], next_token_loss, torch.optim.SGD(big.parameters(), lr=0.5),
                                       config, CPU)
    micro = [{k: v[i:i + 2] for k, v in batch.items()} for i in range(0, 8, 2)]
    small_config = replace(config, micro_batch=2)
    small_loss, small_norm, n = train_step(small, micro, next_token_loss, torch.optim.SGD(small.parameters(), lr=0.5),
                                           small_config, CPU)
    assert n == 8 * 16
    assert small_loss == pytest.approx(big_loss, rel=1e-6) and small_norm == pytest.approx(big_norm, rel=1e-5)
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_weights_micro_batches_by_their_tokens():
    """Micro-batches with different numbers of counted targets: the step's loss is the mean over
    all counted targets, not the mean of the micro-batch means."""
    batch = random_batch(4)
    batch["targets"][2:, 4:] = IGNORE
    config = TrainConfig(global_batch=4, micro_batch=2, precision="fp32")
    model = tiny_model()
    whole, _ = next_token_loss(model, batch)
    loss, _, n = train_step(model, [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}],
                            next_token_loss, make_optimizer(model, config), config, CPU)
    assert n == 2 * 16 + 2 * 4
    assert loss == pytest.approx(whole.item(), rel=1e-6)


def test_tiny_model_overfits_a_small_batch(tmp_path):
    batch = random_batch(4)
    config = TrainConfig(max_steps=60, global_batch=4, micro_batch=4, lr=1e-2, min_lr=1e-3, warmup_steps=5,
                         weight_decay=0.0, eval_every=60, checkpoint_every=0, precision="bf16", progress=False)
    result = train(tiny_model(), iter(Repeat(batch)), next_token_loss, config, tmp_path, eval_data=[batch],
                   tokens_per_byte=0.5, process=CPU)
    assert result.loss < 0.5  # from ln(64) = 4.16: the 64 targets are memorised
    assert result.eval["eval_loss"] < 0.5
    assert result.eval["bits_per_byte"] == pytest.approx(result.eval["eval_loss"] * 0.5 / math.log(2))
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 60




def test_clipping_scales_the_mean_gradient_to_the_clip_norm():
    """The step the loop takes is the mean loss's gradient, shrunk to `grad_clip` when longer, in
    the one pass that also divides by the token count; the norm it reports is the unclipped one."""
    batch = random_batch(4)
    reference = tiny_model()
    loss, _ = next_token_loss(reference, batch)
    loss.backward()
    gradient_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()])).item()
    for grad_clip in (0.0, gradient_norm / 4):
        model = tiny_model()
        config = TrainConfig(global_batch=4, micro_batch=4, precision="fp32", grad_clip=grad_clip)
        _, norm, _ = train_step(model, [batch], next_token_loss, torch.optim.SGD(model.parameters(), lr=1.0),
                                config, CPU)
        shrink = 1 / 4 if grad_clip else 1.0
        assert norm == pytest.approx(gradient_norm, rel=1e-5)
        for trained, start in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(trained, start.detach() - shrink * start.grad, rtol=1e-5, atol=1e-6)


def test_compiled_blocks_train_as_the_eager_model(tmp_path):
    """TrainConfig(compile=True): the same losses, step by step, within float32 rounding of fused kernels."""
    batch = random_batch(4)
    losses = {}
    graphs = counters["stats"]["unique_graphs"]
    for compiled in (False, True):
        config = TrainConfig(max_steps=3, global_batch=4, micro_batch=4, warmup_steps=1, checkpoint_every=0,
                             precision="fp32", progress=False, compile=compiled)
        train(tiny_model(), iter(Repeat(batch)), next_token_loss, config, tmp_path / str(compiled), process=CPU)
        records = (tmp_path / str(compiled) / "metrics.jsonl").read_text().splitlines()
        losses[compiled] = [json.loads(line)["loss"] for line in records]
    assert counters["stats"]["unique_graphs"] - graphs == 1  # both blocks run the one graph
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True][-1] < losses[True][0]


def test_keep_freed_memory_keeps_a_freed_block_in_the_process():
    """By default glibc hands a large freed block back to the system (the resident set falls); after
    keep_freed_memory it stays for the next allocation. Run in a fresh interpreter: the setting is
    for the whole process."""
    probe = """
from pathlib import Path
import torch
from nexttoken.accel.memory import keep_freed_memory
def current_rss_mib():
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
def kept_after_free():
    before = current_rss_mib()
    block = torch.ones(50_000_000)  # 200 MB
    del block
    return current_rss_mib() - before
print(kept_after_free(), keep_freed_memory(), kept_after_free())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    default_kept, changed, kept = float(out[0]), out[1], float(out[2])
    assert changed == "True"
    assert default_kept < 50 and kept > 150


def test_global_batch_must_divide_evenly():
    with pytest.raises(NextTokenError, match="not a multiple"):
        TrainConfig(global_batch=10, micro_batch=4).accumulation(world_size=1)
    assert TrainConfig(global_batch=16, micro_batch=4).accumulation(world_size=2) == 2
