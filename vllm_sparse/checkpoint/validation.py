"""Cheap checks of a checkpoint directory, run before any weight is loaded, so a
broken file stops the server before it starts instead of half-way through."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import CheckpointError

_HEADER_LENGTH_BYTES = 8


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw_length = handle.read(_HEADER_LENGTH_BYTES)
        if len(raw_length) < _HEADER_LENGTH_BYTES:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_length,) = struct.unpack("<Q", raw_length)
        if header_length > size - _HEADER_LENGTH_BYTES:
            raise CheckpointError(
                f"{path}: truncated safetensors file: header claims {header_length} bytes "
                f"but the file has {size}"
            )
        try:
            header = json.loads(handle.read(header_length))
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from exc
    data_bytes = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    expected = _HEADER_LENGTH_BYTES + header_length + data_bytes
    if size < expected:
        raise CheckpointError(
            f"{path}: truncated safetensors file: its tensors need {expected} bytes but the file has {size}"
        )
    return header


def checkpoint_tensor_names(model_dir: str | Path) -> dict[str, Path]:
    """Every tensor name in a checkpoint directory, mapped to its file; each file's
    header is checked on the way."""
    names: dict[str, Path] = {}
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for path in files:
        for name in read_safetensors_header(path):
            if name != "__metadata__":
                names[name] = path
    return names
