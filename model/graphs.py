"""A callable captured once into a CUDA graph and replayed with new inputs (no host syncs inside).

`CapturedGraph(fn, example_inputs)` copies the inputs into static device buffers, runs `fn` a few
times on a side stream (allocator warm-up, lazy kernel init), captures one call and, on each
`__call__(*inputs)`, copies the new inputs into the buffers, replays and returns clones of the
outputs (a tensor, or a tuple / dict of tensors). The policy uses it for the vision + router stage
and for the view + prefix + denoising stage (`DrivePolicy(..., graph_vision=True)`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(v) for v in out)
    return out


class CapturedGraph:
    def __init__(self, fn: Callable[..., Any], example_inputs: Sequence[torch.Tensor], warmup: int = 2) -> None:
        device = example_inputs[0].device
        if device.type != "cuda":
            raise ValueError("CapturedGraph needs CUDA tensors")
        self.fn = fn
        self.static = [x.detach().clone() for x in example_inputs]
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                fn(*self.static)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.outputs = fn(*self.static)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for static, value in zip(self.static, inputs, strict=True):
            if tuple(value.shape) != tuple(static.shape) or value.dtype != static.dtype:
                raise ValueError(f"graph captured for {tuple(static.shape)} {static.dtype}, got {tuple(value.shape)} {value.dtype}")
            static.copy_(value)
        self.graph.replay()
        return _clone(self.outputs)
