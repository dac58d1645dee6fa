"""`nexttoken bench`: how fast a model runs here, beside the memory-bandwidth bound for its weights.

Decoding one token reads every weight once, so tokens/s cannot exceed bandwidth / weight bytes
(times the batch size, which shares each read); the bandwidth is measured on this machine, now."""

import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nexttoken.decoding.config import GenerationConfig, SamplingConfig
from nexttoken.model.transformer import Transformer
from nexttoken.pretrained import LanguageModel


@dataclass(frozen=True)
class BenchResult:
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    ttft_s: float  # time to the first new token: the prefill and one selection
    peak_rss_mib: float
    weight_mib: float  # bytes read per decode step
    bandwidth_gb_s: float
    bandwidth_bound_tok_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def measure_bandwidth(model: Transformer, repeats: int = 5) -> float:
    """GB/s this machine reads the model's own weights at with PyTorch's threads: the best of a few
    passes taking the maximum of each (as 8-byte words, a reduction that costs less than its reads).
    No buffer of its own, so that the bench's peak memory is the model's."""
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}.values()
    words = [t.detach().reshape(-1).view(torch.uint8).view(torch.int64) for t in tensors
             if t.is_contiguous() and t.data_ptr() % 8 == 0 and t.numel() * t.element_size() % 8 == 0]
    for word in words:
        word.max()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for word in words:
            word.max()
        best = min(best, time.perf_counter() - start)
    return sum(word.numel() * 8 for word in words) / best / 1e9


def weight_bytes_per_token(model: Transformer) -> int:
    """Bytes of every weight a decode step reads, each tensor once: all but the embedding table,
    which is read only row by row unless it is also the output head, and but what a module's
    `decoding_buffers` leaves out (copies of int4 weights that only prompts read, the exact half of
    a split head)."""
    unread = {f"{name}.{buffer}" for name, module in model.named_modules() if hasattr(module, "decoding_buffers")
              for buffer, _ in module.named_buffers() if buffer not in module.decoding_buffers()}
    if model.lm_head is not None:  # a head that shares the table lists it under its own name too
        unread.update(name for name in model.state_dict() if name.startswith("embed."))
    read = {t.data_ptr(): t for name, t in model.state_dict().items() if name not in unread}
    return sum(t.numel() * t.element_size() for t in read.values())


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM, where there is one: getrusage's maximum
    survives exec, so a process started from a large one would report its parent's peak."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def run_bench(lm: LanguageModel, prompt_tokens: int = 512, new_tokens: int = 128, batch_size: int = 1) -> BenchResult:
    filler = lm.tokenizer.encode(" ".join(f"Line {i}: a sentence about language models." for i in range(prompt_tokens)))
    prompts = [filler[:prompt_tokens]] * batch_size
    forced = SamplingConfig(min_new_tokens=new_tokens)  # every row decodes all new_tokens
    lm.generate_batch(prompts, GenerationConfig(max_new_tokens=2, sampling=SamplingConfig(min_new_tokens=2)))  # warm-up
    start = time.perf_counter()
    lm.generate_batch(prompts, GenerationConfig(max_new_tokens=1))
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    lm.generate_batch(prompts, GenerationConfig(max_new_tokens=new_tokens + 1, sampling=forced))
    decode_seconds = time.perf_counter() - start - ttft
    bandwidth = measure_bandwidth(lm.model)
    weights = weight_bytes_per_token(lm.model)
    return BenchResult(
        batch_size=batch_size, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
        prefill_tok_s=batch_size * prompt_tokens / ttft, decode_tok_s=batch_size * new_tokens / decode_seconds,
        ttft_s=ttft, peak_rss_mib=peak_rss_mib(), weight_mib=weights / 2**20, bandwidth_gb_s=bandwidth,
        bandwidth_bound_tok_s=batch_size * bandwidth * 1e9 / weights,
    )
