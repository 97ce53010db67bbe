"""The per-layer table shown at server start-up and by ``vllm-sparse inspect``."""

from __future__ import annotations

from dataclasses import dataclass

_MIB = 1024 * 1024


@dataclass(frozen=True)
class LayerRow:
    name: str
    shape: tuple[int, ...]
    pattern: str  # "2:4", "4:8", "unstructured" or "dense"
    sparsity: float
    kernel: str  # the path the dispatcher chose
    dense_bytes: int
    stored_bytes: int  # bytes the chosen path keeps in memory
    quantization: str = ""  # the layer's quantization scheme ("W8A8 int8"), "" when none


_HEADERS = ("layer", "shape", "pattern", "sparsity", "quant", "kernel", "dense MiB", "stored MiB")
_QUANT_COLUMN = _HEADERS.index("quant")


def _cells(row: LayerRow) -> tuple[str, ...]:
    return (
        row.name,
        "x".join(str(size) for size in row.shape),
        row.pattern,
        f"{row.sparsity:.1%}",
        row.quantization or "-",
        row.kernel,
        f"{row.dense_bytes / _MIB:.2f}",
        f"{row.stored_bytes / _MIB:.2f}",
    )


def format_layer_table(rows: list[LayerRow]) -> str:
    """A plain-text table with a totals line (weighted sparsity, summed bytes); the
    quantization column only when some layer is quantized."""
    body = [_cells(row) for row in rows]
    params = sum(_numel(row.shape) for row in rows)
    zeros = sum(row.sparsity * _numel(row.shape) for row in rows)
    total = (
        f"total ({len(rows)} layers)",
        "",
        "",
        f"{zeros / params:.1%}" if params else "-",
        "",
        "",
        f"{sum(r.dense_bytes for r in rows) / _MIB:.2f}",
        f"{sum(r.stored_bytes for r in rows) / _MIB:.2f}",
    )
    headers = _HEADERS
    if not any(row.quantization for row in rows):
        def drop(cells):
            return cells[:_QUANT_COLUMN] + cells[_QUANT_COLUMN + 1:]
        headers, body, total = drop(headers), [drop(cells) for cells in body], drop(total)
    widths = [max(len(line[i]) for line in (headers, *body, total)) for i in range(len(headers))]

    def render(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return "  ".join([first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:])])

    rule = "-" * len(render(headers))
    return "\n".join([render(headers), rule, *map(render, body), rule, render(total)])


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
