"""Training on a CUDA GPU: the same loop, objectives and models as on the CPU. These run only where
a GPU is present (the CI machines have none; run this file on a machine with one)."""

import json
from pathlib import Path

import pytest
import torch
from train_tiny import Repeat

from nexttoken.config import ModelConfig
from nexttoken.model.transformer import Transformer
from nexttoken.train.distributed import start
from nexttoken.train.initialization import init_weights
from nexttoken.train.loop import TrainConfig, train
from nexttoken.train.objectives import IGNORE, next_token_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DECODER = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=32)
ENCODER = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, d_ff=64, max_seq_len=32, causal=False,
                      norm="layer", pre_norm=False, mlp="gelu", positions="learned", bias=True, embed_norm=True)


def padded_batch() -> dict[str, torch.Tensor]:
    """Four rows of 16 random tokens, the last two right-padded after 10."""
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": tokens[:, :-1].clone(), "targets": tokens[:, 1:].clone(),
             "attention_mask": torch.ones(4, 16, dtype=torch.bool)}
    batch["attention_mask"][2:, 10:] = False
    batch["targets"][2:, 10:] = IGNORE
    return batch


def losses(model_config: ModelConfig, device: str, precision: str, run_dir: Path, steps: int = 4) -> list[float]:
    torch.manual_seed(0)
    model = init_weights(Transformer(model_config), model_config.n_layer)
    config = TrainConfig(max_steps=steps, global_batch=4, micro_batch=4, lr=1e-2, warmup_steps=1, checkpoint_every=0,
                         precision=precision, progress=False)
    train(model, iter(Repeat(padded_batch())), next_token_loss, config, run_dir, process=start(device))
    assert next(model.parameters()).device.type == device
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model_config", [DECODER, ENCODER], ids=["decoder", "encoder"])
def test_float32_training_on_the_gpu_follows_the_cpu(model_config, tmp_path):
    """A padded batch (positions, masks and targets built on the batch's device), four steps."""
    cpu = losses(model_config, "cpu", "fp32", tmp_path / "cpu")
    gpu = losses(model_config, "cuda", "fp32", tmp_path / "gpu")
    assert gpu == pytest.approx(cpu, rel=1e-4)


def test_bfloat16_autocast_trains_on_the_gpu(tmp_path):
    steps = losses(DECODER, "cuda", "bf16", tmp_path, steps=30)
    assert steps[-1] < steps[0] - 1.0
