"""Weights moved into huge-page memory: the same tensors, values and outputs, in one aligned block."""

import torch
from test_export import tiny_decoder

from nexttoken import memory
from nexttoken.model.quantize import quantize_linears


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
