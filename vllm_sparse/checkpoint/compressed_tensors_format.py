"""Reader and writer for compressed-tensors' two sparse weight formats,
``sparse-bitmask`` and ``sparse-24-bitmask``, byte-compatible with
compressed-tensors 0.14.0.1.

compressed-tensors 0.17 (the version vLLM 0.32 pins) still names these formats in
its config classes but no longer contains the code that writes or reads them
(removed in 0.15.0), so this module implements both directions itself. What
follows was learnt by reading 0.14.0.1's source
(``compressors/sparse_compressors/{base,sparse_bitmask,sparse_24_bitmask}.py``,
``utils/helpers.py``, ``utils/safetensors_load.py``, ``utils/match.py``,
``compressors/model_compressors/model_compressor.py``) and checked against files
0.14.0.1 wrote (tests/checkpoint/fixtures/ct014, made by
tests/checkpoint/make_ct014_fixtures.py).

Tensor names
------------
A compressed weight ``<module>.weight`` is replaced by tensors named
``<module>.<part>``: the ``.weight`` suffix is stripped from the prefix, then
``"." + part`` appended. Parts, in the order 0.14.0.1 emits them:

* ``sparse-bitmask``: ``shape``, ``compressed``, ``bitmask``, ``row_offsets``
* ``sparse-24-bitmask``: ``shape``, ``compressed``, ``bitmask``

On reading, 0.14.0.1 groups a checkpoint's tensors by the regex
``^(.*)\\.<part>$`` for each part name of the format; everything else is passed
through untouched, and each group decompresses to ``<module>.weight``.

Per-weight tensors (dense weight of shape [R, C], dtype D)
---------------------------------------------------------
``sparse-bitmask`` (any structure; 0.14.0.1 does not require 2-D):

* ``shape``: int64, 1-D ``[ndim]``, the dense shape (``torch.tensor(list(shape))``).
* ``compressed``: D, 1-D ``[nnz]``: the entries with ``value != 0`` in row-major
  order. ``-0.0 == 0``, so a -0.0 is dropped and comes back as +0.0 (the only way
  the round trip is not bit-exact); NaN and inf are kept.
* ``bitmask``: uint8 ``[R, ceil(C/8)]`` (generally ``[*shape[:-1], ceil(C/8)]``):
  ``numpy.packbits(value != 0, axis=-1, bitorder="little")``, i.e. column ``c`` is
  bit ``c % 8`` (least significant first) of byte ``c // 8``; every row starts on
  a new byte and the padding bits of its last byte are 0.
* ``row_offsets``: int64 ``[R]``: index in ``compressed`` where each row starts
  (exclusive cumulative sum of per-row counts; ``cumsum(counts, 0) - counts``
  over ``(value != 0).sum(-1)``, so a 1-D weight gets a 0-d ``0``). The 0.14.0.1
  reader ignores it; we check it.

``sparse-24-bitmask`` (2-D only, asserted by 0.14.0.1):

* ``shape``: int64, **2-D ``[2, 1]``** (``torch.tensor([R, C]).reshape(-1, 1)``).
  The reader flattens it, so ``[2]`` would be accepted too.
* ``compressed``: D, 2-D ``[R, C/2]``: the kept entries in row-major order.
* ``bitmask``: uint8 ``[R, ceil(C/8)]``, packed as above. Exactly 2 bits are set in
  every group of 4 consecutive entries.

How the 2:4 mask is chosen: the weight is viewed as ``[-1, 4]`` (groups of 4
consecutive entries of the flattened tensor; needs ``numel % 4 == 0`` and, for the
reshape to ``[R, C/2]``, in practice ``C % 4 == 0``) and the 2 entries with the
largest ``abs()`` in each group are kept, as ``torch.topk(abs, 2, dim=1)`` picks
them (in the weight's own dtype). Consequences:

* It is not "keep the non-zeros": a group with fewer than 2 non-zeros still keeps
  2 entries, so zeros are stored in ``compressed`` and flagged in the bitmask.
  Which zero positions are flagged follows ``torch.topk``'s CPU tie-breaking,
  which is not index order (e.g. ``[0,0,0,0]`` -> columns 2,3; ``[1,0,0,0]`` ->
  0,2). We call ``torch.topk`` the same way so the bytes match.
* A group with more than 2 non-zeros is silently magnitude-pruned (lossy); ties
  among equal magnitudes again follow ``torch.topk``. We refuse such weights
  unless ``allow_pruning=True`` (then we behave exactly like 0.14.0.1).
* ``sparsity_structure`` must be "2:4" (0.14.0.1 asserts it).
* float8_e4m3fn is handled by 0.14.0.1 through an int8 view (its 2:4 ranking then
  compares int8 bit patterns); we support float32, float16 and bfloat16 only.

Which weights are compressed
----------------------------
``ModelCompressor.compress`` first expands ``sparsity_config.targets`` /
``ignore`` to module names with ``match_named_modules`` (a target/ignore entry
matches a module if it equals the module name, if it is ``"re:<regex>"`` and
``re.match`` (anchored at the start only) succeeds on the name, or if it equals
the name of a class in the module's MRO (``Linear`` also matches vLLM's
``LinearBase``)). Then a state-dict entry is compressed iff its name ends with
``.weight`` and the name without ``.weight`` is one of those modules. No
dimensionality filter: with the usual ``targets=["Linear"]`` only 2-D weights
qualify, but a targeted 1-D weight would be bitmask-compressed. Biases and
everything else are written unchanged. See ``checkpoint.targets.target_matcher``.

config.json block
-----------------
``ModelCompressor.update_config`` writes (``json.dump(..., indent=2,
sort_keys=True)``) for a sparsity-only model::

    "quantization_config": {
      "quant_method": "compressed-tensors",
      "sparsity_config": {
        "format": "sparse-24-bitmask",          # or "sparse-bitmask"
        "global_sparsity": 0.5,                 # float, whatever the caller measured
        "ignore": ["lm_head"],                  # list[str] or null
        "registry_requires_subclass": false,    # pydantic dump of a RegistryMixin attr
        "sparsity_structure": "2:4",            # "unstructured" default for bitmask
        "targets": ["Linear"]                   # list[str] or null
      },
      "transform_config": {},
      "version": "0.14.0.1"                     # compressed_tensors.__version__
    }

There is no ``global_compression_ratio``, ``format`` or ``config_groups`` key when
nothing is quantized (those come from ``QuantizationConfig``). The sparsity config
classes (``SparsityCompressionConfig`` and its registered ``BitmaskConfig`` /
``Sparse24BitMaskConfig``) are field-for-field identical in 0.17.0 and their
``model_dump()`` is the same, so we build the block with 0.17's classes. What
differs: 0.17's own ``update_config`` would write ``"version": "0.17.0"`` and an
empty ``"sparsity_config": {}`` (sparsity support removed). We emit
``"version": "0.14.0.1"`` by default (:data:`FORMAT_VERSION`), because the weight
tensors are in 0.14.0.1's layout and that is the version that can read them.

``sparsity_structure`` is a free string in both versions (``"unstructured"``,
``"2:4"``, ``"8:16"``...); only the 2:4 compressor requires ``"2:4"``
(case-insensitively). ``format`` may also be ``"dense"`` (DenseSparsityConfig:
sparse weights stored dense). A ``null`` targets list matches nothing in
0.14.0.1 (``targets or []``), so nothing is compressed. ``parse_sparsity_config``
returns the project's :class:`~vllm_sparse.checkpoint.sparsity_spec.SparsitySpec`
(structure lower-cased, null lists as empty tuples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from vllm_sparse.checkpoint.errors import CheckpointError
from vllm_sparse.checkpoint.sparsity_spec import DENSE_FORMAT, SparsitySpec
from vllm_sparse.kernels.patterns import NMPattern

__all__ = [
    "DENSE_FORMAT",
    "FORMAT_VERSION",
    "PART_NAMES",
    "SPARSE_FORMATS",
    "SUPPORTED_DTYPES",
    "SparsitySpec",
    "compress_state_dict",
    "compress_weight",
    "decompress_state_dict",
    "decompress_weight",
    "declared_sparsity",
    "parse_sparsity_config",
    "quantization_config_dict",
    "sparsity_config_dict",
    "weight_part_names",
]

SPARSE_BITMASK = "sparse-bitmask"
SPARSE_24_BITMASK = "sparse-24-bitmask"
SPARSE_FORMATS = (SPARSE_BITMASK, SPARSE_24_BITMASK)
KNOWN_FORMATS = (DENSE_FORMAT, *SPARSE_FORMATS)

# Per-weight tensors, in the order compressed-tensors 0.14.0.1 emits them.
PART_NAMES: dict[str, tuple[str, ...]] = {
    SPARSE_BITMASK: ("shape", "compressed", "bitmask", "row_offsets"),
    SPARSE_24_BITMASK: ("shape", "compressed", "bitmask"),
}
_ALL_PART_NAMES = frozenset(p for parts in PART_NAMES.values() for p in parts)

# The layout these tensors follow; written as quantization_config.version.
FORMAT_VERSION = "0.14.0.1"
QUANT_METHOD = "compressed-tensors"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Values a quantization scheme stored (W8A8 INT8, FP8).
QUANTIZED_VALUE_DTYPES = (torch.int8, torch.float8_e4m3fn)
# Values are moved through same-width integer views, so every bit (NaN payloads,
# -0.0 kept by 2:4) survives selection and scatter unchanged.
_BITS_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
              torch.int8: torch.int8, torch.float8_e4m3fn: torch.int8}
# 0.14.0.1 writes int64; an int32 shape/row_offsets is harmless, so we read it too.
_INDEX_DTYPES = (torch.int64, torch.int32)


def _check_format(fmt: str, allowed: tuple[str, ...] = SPARSE_FORMATS) -> None:
    if fmt not in allowed:
        raise CheckpointError(
            f"unknown compressed-tensors sparse format {fmt!r}; supported: {', '.join(allowed)}"
        )


# --------------------------------------------------------------------------- bits


def _pack_bits(mask: Tensor) -> Tensor:
    """Bool mask -> uint8 bitmask, 8 entries of the last dim per byte, LSB first,
    every row padded to whole bytes (numpy's packbits does exactly this)."""
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))


def _unpack_bits(bitmask: Tensor, width: int) -> tuple[Tensor, bool]:
    """uint8 bitmask -> (bool mask with last dim ``width``, any padding bit set?)."""
    bits = np.unpackbits(bitmask.contiguous().numpy(), axis=-1, bitorder="little")
    padding_set = bool(bits[..., width:].any())
    return torch.from_numpy(bits[..., :width].astype(bool)), padding_set


def nonzero_mask(values: Tensor) -> Tensor:
    """``values != 0``, also for float8 (which has no comparison on CPU): -0.0 is a
    zero, as IEEE comparison says."""
    if values.dtype == torch.float8_e4m3fn:
        return (values.contiguous().view(torch.uint8) & 0x7F) != 0
    return values != 0


def _top2_of_4_mask(dense: Tensor) -> Tensor:
    """The 2:4 mask 0.14.0.1 chooses: in each group of 4 consecutive entries the 2
    largest by abs(), ranked by torch.topk in the weight's dtype. We use topk itself
    (not a sort) because its tie-breaking decides which zeros are flagged in groups
    with fewer than 2 non-zeros, and those bits are part of the file."""
    groups = dense.reshape(-1, 4)
    if dense.dtype == torch.int8:
        # Ranked in int16: abs(-128) wraps in int8, which is how 0.14.0.1 drops
        # -128; the same ranking as its otherwise.
        magnitude = groups.to(torch.int16).abs()
    elif dense.dtype == torch.float8_e4m3fn:
        magnitude = groups.to(torch.float32).abs()  # exact; fp8 has no abs on CPU
    else:
        magnitude = groups.abs()
    keep = magnitude.topk(2, dim=1).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, keep, True)
    return mask.reshape(dense.shape)


def _select(dense: Tensor, mask: Tensor) -> Tensor:
    bits = _BITS_VIEW[dense.dtype]
    return dense.contiguous().view(bits)[mask].view(dense.dtype)


# ----------------------------------------------------------------------- compress


def compress_weight(
    dense: Tensor, fmt: str, *, allow_pruning: bool = False, name: str = "weight"
) -> dict[str, Tensor]:
    """Compress one dense weight into the tensors 0.14.0.1 writes for it, keyed by
    part name (see PART_NAMES; same dtypes, shapes and bytes as 0.14.0.1).

    For sparse-24-bitmask a weight with a group of 4 holding more than 2 non-zeros
    raises CheckpointError, because 0.14.0.1 would silently drop the smallest ones;
    ``allow_pruning=True`` reproduces that lossy behaviour. ``name`` only labels
    error messages."""
    _check_format(fmt)
    if not isinstance(dense, Tensor):
        raise CheckpointError(f"{name}: expected a torch.Tensor, got {type(dense).__name__}")
    if dense.dtype not in SUPPORTED_DTYPES + QUANTIZED_VALUE_DTYPES:
        raise CheckpointError(
            f"{name}: dtype {dense.dtype} is not supported for {fmt} "
            f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES + QUANTIZED_VALUE_DTYPES)})"
        )
    dense = dense.detach().cpu().contiguous()
    nonzero = nonzero_mask(dense)
    shape = tuple(dense.shape)

    if fmt == SPARSE_BITMASK:
        if dense.dim() < 1:
            raise CheckpointError(f"{name}: cannot bitmask-compress a 0-d tensor")
        mask = nonzero
        counts = mask.sum(dim=-1)  # int64
        return {
            "shape": torch.tensor(shape, dtype=torch.int64),
            "compressed": _select(dense, mask),
            "bitmask": _pack_bits(mask),
            "row_offsets": torch.cumsum(counts, 0) - counts,
        }

    # sparse-24-bitmask
    if dense.dim() != 2:
        raise CheckpointError(f"{name}: sparse-24-bitmask needs a 2-D weight, got shape {list(shape)}")
    rows, cols = shape
    if cols % 4:
        # 0.14.0.1 would form groups across row ends when rows*cols % 4 == 0; no
        # real layer looks like that and no 2:4 kernel reads it, so we refuse.
        raise CheckpointError(
            f"{name}: sparse-24-bitmask needs in_features (dim 1) to be a multiple of 4, got {list(shape)}"
        )
    if not allow_pruning:
        counts = nonzero.reshape(rows, cols // 4, 4).sum(dim=-1)
        bad = (counts > 2).nonzero()
        if bad.numel():
            r, g = (int(v) for v in bad[0])
            raise CheckpointError(
                f"{name}: not 2:4 sparse: row {r}, columns {4 * g}..{4 * g + 3} hold "
                f"{int(counts[r, g])} non-zeros ({len(bad)} such groups); compressing would "
                f"drop values (pass allow_pruning=True to prune by magnitude like 0.14.0.1)"
            )
    mask = _top2_of_4_mask(dense)
    return {
        "shape": torch.tensor([rows, cols], dtype=torch.int64).reshape(-1, 1),
        "compressed": _select(dense, mask).reshape(rows, cols // 2),
        "bitmask": _pack_bits(mask),
    }


def _strip_weight(name: str) -> str | None:
    return name[: -len(".weight")] if name.endswith(".weight") else None


def compress_state_dict(
    state_dict: Mapping[str, Tensor],
    fmt: str,
    targets: Callable[[str], bool],
    *,
    allow_pruning: bool = False,
) -> dict[str, Tensor]:
    """Whole-checkpoint compression with 0.14.0.1's rule: an entry is compressed iff
    its name ends with ``.weight`` and ``targets(module_name)`` is true for the name
    without ``.weight`` (build ``targets`` with ``targets.target_matcher`` to get
    0.14.0.1's targets/ignore matching). Other entries are kept as they are.
    ``fmt="dense"`` returns a shallow copy."""
    _check_format(fmt, KNOWN_FORMATS)
    if fmt == DENSE_FORMAT:
        return dict(state_dict)
    out: dict[str, Tensor] = {}
    for name, value in state_dict.items():
        module = _strip_weight(name)
        if module is None or not targets(module):
            entries = {name: value}
        else:
            parts = compress_weight(value, fmt, allow_pruning=allow_pruning, name=name)
            entries = {f"{module}.{part}": t for part, t in parts.items()}
        for key, tensor in entries.items():
            # 0.14.0.1 would overwrite with a warning; a clash means a corrupt result.
            if key in out or (key != name and key in state_dict):
                raise CheckpointError(f"{key}: compressing {name} produces a name already in the state dict")
            out[key] = tensor
    return out


# --------------------------------------------------------------------- decompress


def _shape_from_part(shape_t: Tensor, fmt: str, name: str) -> list[int]:
    key = f"{name}.shape"
    if shape_t.dtype not in _INDEX_DTYPES:
        raise CheckpointError(f"{key}: dtype {shape_t.dtype}, expected torch.int64")
    if fmt == SPARSE_24_BITMASK:
        # 0.14.0.1 writes [2, 1] and flattens on read.
        if tuple(shape_t.shape) not in ((2, 1), (2,)):
            raise CheckpointError(f"{key}: has shape {list(shape_t.shape)}, expected [2, 1] (rows, cols)")
    elif shape_t.dim() != 1 or shape_t.numel() < 1:
        raise CheckpointError(f"{key}: has shape {list(shape_t.shape)}, expected [ndim] with ndim >= 1")
    dims = [int(v) for v in shape_t.flatten().tolist()]
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{key}: negative dimension in {dims}")
    return dims


def decompress_weight(parts: Mapping[str, Tensor], fmt: str, name: str) -> Tensor:
    """Rebuild the dense weight from its parts (keyed by part name). ``name`` is the
    weight's prefix in the checkpoint (``<module>``); every inconsistency raises
    CheckpointError naming the tensor at fault."""
    _check_format(fmt)
    expected = PART_NAMES[fmt]
    missing = [p for p in expected if p not in parts]
    extra = sorted(set(parts) - set(expected))
    if missing or extra:
        what = []
        if missing:
            what.append("missing " + ", ".join(f"{name}.{p}" for p in missing))
        if extra:
            what.append("unexpected " + ", ".join(f"{name}.{p}" for p in extra))
        raise CheckpointError(f"{name}: {fmt} weight has {'; '.join(what)} (expected parts: {', '.join(expected)})")
    for p in expected:
        if not isinstance(parts[p], Tensor):
            raise CheckpointError(f"{name}.{p}: expected a tensor, got {type(parts[p]).__name__}")

    dims = _shape_from_part(parts["shape"], fmt, name)
    values = parts["compressed"].detach().cpu()
    bitmask = parts["bitmask"].detach().cpu()

    if values.dtype not in SUPPORTED_DTYPES + QUANTIZED_VALUE_DTYPES:
        raise CheckpointError(
            f"{name}.compressed: dtype {values.dtype} is not supported "
            f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES + QUANTIZED_VALUE_DTYPES)})"
        )
    if bitmask.dtype != torch.uint8:
        raise CheckpointError(f"{name}.bitmask: dtype {bitmask.dtype}, expected torch.uint8")
    width = dims[-1]
    want_mask_shape = [*dims[:-1], math.ceil(width / 8)]
    if list(bitmask.shape) != want_mask_shape:
        raise CheckpointError(
            f"{name}.bitmask: has shape {list(bitmask.shape)}, but {name}.shape {dims} "
            f"needs {want_mask_shape} (ceil(cols/8) bytes per row)"
        )
    mask, padding_set = _unpack_bits(bitmask, width)
    if padding_set:
        raise CheckpointError(f"{name}.bitmask: padding bits beyond column {width - 1} are set")
    nnz = int(mask.sum())

    if fmt == SPARSE_BITMASK:
        if values.dim() != 1:
            raise CheckpointError(f"{name}.compressed: has shape {list(values.shape)}, expected 1-D")
        if values.numel() != nnz:
            raise CheckpointError(
                f"{name}.bitmask: {nnz} bits set but {name}.compressed holds {values.numel()} values"
            )
        offsets = parts["row_offsets"].detach().cpu()
        if offsets.dtype not in _INDEX_DTYPES:
            raise CheckpointError(f"{name}.row_offsets: dtype {offsets.dtype}, expected torch.int64")
        counts = mask.sum(dim=-1)
        want = torch.cumsum(counts, 0) - counts
        if offsets.shape != want.shape:
            raise CheckpointError(
                f"{name}.row_offsets: has shape {list(offsets.shape)}, expected {list(want.shape)} (one per row)"
            )
        diff = (offsets.to(torch.int64) != want).nonzero()
        if diff.numel():
            i = tuple(int(v) for v in diff[0])
            raise CheckpointError(
                f"{name}.row_offsets: entry {list(i)} is {int(offsets[i])}, but {name}.bitmask "
                f"puts that row's first value at {int(want[i])}"
            )
    else:
        if len(dims) != 2:
            raise CheckpointError(f"{name}.shape: {dims} is not 2-D")
        rows, cols = dims
        if cols % 4:
            raise CheckpointError(f"{name}.shape: {dims}: cols must be a multiple of 4 for 2:4")
        if list(values.shape) != [rows, cols // 2]:
            raise CheckpointError(
                f"{name}.compressed: has shape {list(values.shape)}, but {name}.shape {dims} "
                f"needs {[rows, cols // 2]}"
            )
        counts = mask.reshape(rows, cols // 4, 4).sum(dim=-1)
        bad = (counts != 2).nonzero()
        if bad.numel():
            r, g = (int(v) for v in bad[0])
            raise CheckpointError(
                f"{name}.bitmask: row {r}, columns {4 * g}..{4 * g + 3} flag {int(counts[r, g])} "
                f"entries; sparse-24-bitmask flags exactly 2 of every 4 ({len(bad)} bad groups)"
            )

    bits = _BITS_VIEW[values.dtype]
    out = torch.zeros(dims, dtype=bits)
    out[mask] = values.contiguous().view(bits).reshape(-1)
    return out.view(values.dtype)


def weight_part_names(tensor_names: Iterable[str], fmt: str | None = None) -> dict[str, set[str]]:
    """Group compressed-weight tensors by prefix: ``{"m.q_proj": {"shape",
    "compressed", "bitmask"}, ...}``. A name belongs to prefix P with part X when
    it is ``P + "." + X`` and X is a part name of ``fmt`` (of either sparse format
    when ``fmt`` is None), which is how 0.14.0.1 groups them. Other names are left
    out."""
    if fmt is not None:
        _check_format(fmt, KNOWN_FORMATS)
    known = frozenset(PART_NAMES.get(fmt, ())) if fmt is not None else _ALL_PART_NAMES
    groups: dict[str, set[str]] = {}
    for full in tensor_names:
        prefix, dot, part = full.rpartition(".")
        if dot and prefix and part in known:
            groups.setdefault(prefix, set()).add(part)
    return groups


def decompress_state_dict(tensors: Mapping[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Whole-checkpoint decompression: every group of part tensors becomes
    ``<prefix>.weight``; other tensors are passed through. Parts of the other sparse
    format found next to a group (e.g. ``row_offsets`` in a sparse-24-bitmask
    checkpoint) are reported as unexpected rather than passed through, since they
    mean the declared format is wrong."""
    _check_format(fmt, KNOWN_FORMATS)
    if fmt == DENSE_FORMAT:
        return dict(tensors)
    own = frozenset(PART_NAMES[fmt])
    groups = {
        prefix: names
        for prefix, names in weight_part_names(tensors.keys()).items()
        if names & own  # a lone foreign part name alone is an ordinary tensor
    }
    out: dict[str, Tensor] = {}
    done: set[str] = set()
    for key, value in tensors.items():
        prefix, _, part = key.rpartition(".")
        if prefix in groups and part in groups[prefix]:
            if prefix in done:
                continue
            done.add(prefix)
            dense_name = f"{prefix}.weight"
            if dense_name in tensors:
                raise CheckpointError(f"{dense_name}: present both dense and as compressed {fmt} parts")
            parts = {p: tensors[f"{prefix}.{p}"] for p in groups[prefix]}
            out[dense_name] = decompress_weight(parts, fmt, prefix)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------- config


def _check_structure(fmt: str, structure, key: str) -> str:
    """Validate a sparsity_structure string and return it lower-cased.

    compressed-tensors' config field is a free string ("unstructured", "2:4",
    "8:16", ...); only the 2:4 compressor insists on "2:4" (through
    SparsityStructure, which is case-insensitive). We accept "unstructured",
    "0:0" and any "N:M" with 0 < N < M, and "2:4" alone for sparse-24-bitmask."""
    if not isinstance(structure, str):
        raise CheckpointError(f"{key}: expected a string such as 'unstructured' or '2:4', got {structure!r}")
    value = structure.strip().lower()
    if value not in ("unstructured", "0:0"):
        try:
            NMPattern.parse(value)
        except ValueError:
            raise CheckpointError(
                f"{key}: {structure!r} is not a sparsity structure ('unstructured', '0:0' or 'N:M' such as '2:4')"
            ) from None
    if fmt == SPARSE_24_BITMASK and value != "2:4":
        raise CheckpointError(f"{key}: {fmt} requires sparsity_structure '2:4', got {structure!r}")
    return value


def sparsity_config_dict(
    fmt: str,
    *,
    sparsity_structure: str,
    global_sparsity: float,
    targets: list[str] | None,
    ignore: list[str] | None,
) -> dict:
    """``quantization_config.sparsity_config`` as 0.14.0.1 writes it, built with
    compressed-tensors 0.17's (unchanged) config classes. ``fmt`` may also be
    "dense" (sparse weights stored dense: compressed-tensors' DenseSparsityConfig).
    ``sparsity_structure`` is validated and written as given, like 0.14.0.1 does."""
    from compressed_tensors.config import SparsityCompressionConfig

    _check_format(fmt, KNOWN_FORMATS)
    _check_structure(fmt, sparsity_structure, "sparsity_structure")
    config = SparsityCompressionConfig.load_from_registry(
        fmt,
        sparsity_structure=sparsity_structure,
        global_sparsity=float(global_sparsity),
        targets=None if targets is None else list(targets),
        ignore=None if ignore is None else list(ignore),
    )
    return dict(sorted(config.model_dump().items()))


def quantization_group_dict(value_type: str, num_bits: int = 8, *, group_size: int | None = None,
                            dynamic_activations: bool = True) -> dict:
    """One ``config_groups`` entry as 0.14.0.1 writes it for round-to-nearest
    symmetric weights (``value_type`` "int" or "float"), one scale per row or per
    ``group_size`` columns, with dynamic per-token activations of the same type (the
    W8A8 "dynamic" layouts) or none (weight-only, e.g. W4A16)."""
    def args(**given) -> dict:
        base = {"actorder": None, "block_structure": None, "group_size": None, "num_bits": num_bits,
                "observer_kwargs": {}, "scale_dtype": None, "symmetric": True, "type": value_type, "zp_dtype": None}
        return dict(sorted({**base, **given}.items()))

    strategy = {"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size}
    return {
        "format": None,
        "input_activations": args(dynamic=True, observer=None, strategy="token") if dynamic_activations else None,
        "output_activations": None,
        "targets": ["Linear"],
        "weights": args(dynamic=False, observer="memoryless_minmax", **strategy),
    }


QUANTIZED_FORMATS = {"int": "int-quantized", "float": "float-quantized"}
PACK_QUANTIZED = "pack-quantized"  # integers of fewer than 8 bits, packed into int32
MARLIN24 = "marlin-24"  # 2:4 4- or 8-bit weights laid out for the Marlin 2:4 kernel


def quantized_format(quantization: dict, storage: str) -> str:
    """The ``format`` of the quantization block for a config group stored as
    ``storage``: marlin-24 is itself a quantization format."""
    if storage == MARLIN24:
        return MARLIN24
    weights = quantization["weights"]
    if weights["type"] == "int" and weights["num_bits"] < 8:
        return PACK_QUANTIZED
    return QUANTIZED_FORMATS[weights["type"]]


def quantization_config_dict(
    fmt: str,
    *,
    sparsity_structure: str,
    global_sparsity: float,
    targets: list[str] | None,
    ignore: list[str] | None,
    version: str = FORMAT_VERSION,
    quantization: dict | None = None,
) -> dict:
    """The whole ``quantization_config`` block of config.json, as 0.14.0.1's
    ``ModelCompressor.update_config`` writes it (keys sorted, as its
    json.dump(sort_keys=True) leaves them): sparsity only, or with ``quantization``
    (a :func:`quantization_group_dict`) as its one config group. ``fmt`` "marlin-24"
    is a quantization format whose sparsity block says ``dense``."""
    from compressed_tensors.base import (
        COMPRESSION_VERSION_NAME,
        QUANTIZATION_METHOD_NAME,
        SPARSITY_CONFIG_NAME,
        TRANSFORM_CONFIG_NAME,
    )

    block = {
        COMPRESSION_VERSION_NAME: version,
        QUANTIZATION_METHOD_NAME: QUANT_METHOD,
        SPARSITY_CONFIG_NAME: sparsity_config_dict(
            "dense" if fmt == MARLIN24 else fmt,
            sparsity_structure=sparsity_structure,
            global_sparsity=global_sparsity,
            targets=targets,
            ignore=ignore,
        ),
        TRANSFORM_CONFIG_NAME: {},
    }
    if quantization is not None:
        block |= {
            "config_groups": {"group_0": quantization},
            "format": quantized_format(quantization, fmt),
            "global_compression_ratio": None,
            "ignore": list(ignore or ()),
            "kv_cache_scheme": None,
            "quantization_status": "compressed",
        }
    return dict(sorted(block.items()))


def _str_list(value, key: str) -> tuple[str, ...]:
    # null means no entries: 0.14.0.1's match_named_modules treats None as [], so
    # null targets compress nothing and null ignore ignores nothing.
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"{key}: expected a list of strings or null, got {value!r}")
    return tuple(value)


_SPARSITY_KEYS = ("format", "sparsity_structure", "targets", "ignore", "global_sparsity")


def parse_sparsity_config(quantization_config: Mapping) -> SparsitySpec:
    """Read config.json's ``quantization_config`` block (the dict under that key)
    into a :class:`~vllm_sparse.checkpoint.sparsity_spec.SparsitySpec`. A missing or
    empty ``sparsity_config`` (0.17 writes ``{}``) gives ``SparsitySpec()`` (dense,
    nothing declared). Unknown keys of sparsity_config land in ``spec.extra``."""
    root = "quantization_config"
    if not isinstance(quantization_config, Mapping):
        raise CheckpointError(f"{root}: expected a JSON object, got {type(quantization_config).__name__}")
    method = quantization_config.get("quant_method")
    if method != QUANT_METHOD:
        raise CheckpointError(f"{root}.quant_method: {method!r} is not {QUANT_METHOD!r}")
    sc = quantization_config.get("sparsity_config")
    key = f"{root}.sparsity_config"
    if sc is None or (isinstance(sc, Mapping) and not sc):
        return SparsitySpec()
    if not isinstance(sc, Mapping):
        raise CheckpointError(f"{key}: expected a JSON object, got {type(sc).__name__}")
    fmt = sc.get("format")
    if fmt not in KNOWN_FORMATS:
        raise CheckpointError(
            f"{key}.format: {fmt!r} is not a supported sparse format; "
            f"supported: {', '.join(repr(f) for f in KNOWN_FORMATS)}"
        )
    gs = sc.get("global_sparsity", 0.0)
    gs = 0.0 if gs is None else gs
    if isinstance(gs, bool) or not isinstance(gs, (int, float)) or not 0.0 <= gs <= 1.0:
        raise CheckpointError(f"{key}.global_sparsity: expected a number in [0, 1], got {gs!r}")
    # Field defaults of the 0.14/0.17 config classes when the key is absent or null.
    structure = sc.get("sparsity_structure")
    if structure is None:
        structure = "2:4" if fmt == SPARSE_24_BITMASK else "unstructured"
    return SparsitySpec(
        format=fmt,
        structure=_check_structure(fmt, structure, f"{key}.sparsity_structure"),
        targets=_str_list(sc.get("targets"), f"{key}.targets"),
        ignore=_str_list(sc.get("ignore"), f"{key}.ignore"),
        global_sparsity=float(gs),
        extra={k: v for k, v in sc.items() if k not in _SPARSITY_KEYS},
    )


def declared_sparsity(quantization_config: Mapping | None) -> SparsitySpec:
    """What config.json's ``quantization_config`` declares about sparsity: with no
    such block, or one without a ``sparsity_config``, nothing (dense storage, every
    linear layer scanned at load)."""
    if not quantization_config or not quantization_config.get("sparsity_config"):
        return SparsitySpec.detect_all()
    return parse_sparsity_config(quantization_config)
