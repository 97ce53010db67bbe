"""What a forward pass's batch holds, for FFN skipping: which rows are prompt tokens
(from the attention metadata of vLLM's forward context), and the test trace of
per-row decisions."""

from __future__ import annotations

import torch

from . import vllm_internals as vi

# Test hook: when a list, every real forward pass appends (layer, positions, skipped)
# per layer (CPU tensors). Enabled by enable_trace(); never on in serving.
_trace: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None


def enable_trace() -> None:
    global _trace
    _trace = []


def tracing() -> bool:
    return _trace is not None


def append_trace(layer: int, positions: torch.Tensor, skipped: torch.Tensor) -> None:
    if _trace is not None:
        _trace.append((layer, positions, skipped))


def take_trace() -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    global _trace
    out, _trace = _trace or [], ([] if _trace is not None else None)
    return out


def query_rows_prompt(device: torch.device) -> torch.Tensor | None:
    """Per query row of the batch's requests (padding rows not included): is it a
    prompt token? None outside a real batch (profiling and warm-up dummy runs have no
    attention metadata)."""
    if not vi.is_forward_context_available():
        return None
    metadata = vi.get_forward_context().attn_metadata
    if not isinstance(metadata, dict) or not metadata:
        return None  # dummy run, or micro-batching (a list): run every FFN
    start_loc = getattr(next(iter(metadata.values())), "query_start_loc", None)
    if start_loc is None:
        return None
    start_loc = start_loc.to(device=device, dtype=torch.long)
    query_lens = start_loc[1:] - start_loc[:-1]
    return torch.repeat_interleave(query_lens > 1, query_lens)
