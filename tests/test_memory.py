"""Weights moved into huge-page memory: the same tensors, values and outputs, in one aligned block;
freed memory handed back to the system."""

import subprocess
import sys

import torch
from test_export import tiny_decoder

from nexttoken.accel import memory
from nexttoken.accel.quantize import quantize_linears


def test_moved_weights_are_the_same_tensors_with_the_same_values():
    model = tiny_decoder(tie=True)
    quantize_linears(model.blocks, bits=4)  # buffers move as well as parameters
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.inference_mode():
        before = model(ids)
    assert any(name.endswith("packed") for name, _ in model.named_buffers())
    tensors = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    values = {name: t.clone() for name, t in tensors.items()}
    assert memory.move_to_huge_pages(model)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor is tensors[name]
        assert torch.equal(tensor, values[name])
    with torch.inference_mode():
        assert torch.equal(model(ids), before)
    pointers = sorted(t.data_ptr() for t in tensors.values())
    assert pointers[0] % memory.HUGE_PAGE == 0  # one block, starting at a huge page
    assert all(p % memory.TENSOR_ALIGNMENT == 0 for p in pointers)
    assert pointers[-1] - pointers[0] < sum(t.numel() * t.element_size() + memory.TENSOR_ALIGNMENT for t in tensors.values())


def test_without_huge_pages_nothing_moves(monkeypatch):
    monkeypatch.setattr(memory, "huge_page_bytes", lambda nbytes: None)
    model = tiny_decoder(tie=False)
    pointers = [p.data_ptr() for p in model.parameters()]
    assert not memory.move_to_huge_pages(model)
    assert [p.data_ptr() for p in model.parameters()] == pointers


FREED_MEMORY_PROBE = """
import torch
from pathlib import Path
from nexttoken.accel import memory

def resident_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024

memory.keep_freed_memory()  # as a training process does: malloc then never trims by itself
chunks = [torch.ones(16 * 1024) for _ in range(3200)]  # 64 KiB each, 200 MiB in all
del chunks
before = resident_mib()
memory.hand_back_freed_memory()
print(before - resident_mib())
"""


def test_freed_memory_is_handed_back():
    result = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE], capture_output=True, text=True, check=True)
    assert float(result.stdout.split()[-1]) > 150  # MiB, of the 200 freed
