"""Sparsity patterns of a pruned weight matrix: how sparse it is, and which N:M
pattern (along the input dimension, dim 1) it satisfies.

A weight of shape [out_features, in_features] satisfies N:M when every group of
M consecutive input-dimension entries of every row holds at most N non-zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SparsePatternError(ValueError):
    """A weight does not have the sparsity pattern it was declared or packed with."""


class SparseLayoutError(SparsePatternError):
    """A compressed layout is malformed (wrong dtype or shape, metadata out of range,
    bitmap and value counts that disagree). A subclass of ``SparsePatternError`` so one
    ``except`` catches every "this sparse weight is not what it claims" error."""


@dataclass(frozen=True, order=True)
class NMPattern:
    n: int
    m: int

    def __post_init__(self) -> None:
        if not (0 < self.n < self.m):
            raise ValueError(f"an N:M pattern needs 0 < N < M, got {self.n}:{self.m}")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        return self.n / self.m

    @classmethod
    def parse(cls, text: str) -> "NMPattern":
        try:
            n_text, m_text = str(text).split(":")
            return cls(int(n_text), int(m_text))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not an N:M pattern such as '2:4'") from exc


# The patterns our layouts and kernels handle, tightest first: a 2:4 weight also
# satisfies 4:8, and 2:4 is the cheaper layout to read.
SUPPORTED_NM_PATTERNS = (NMPattern(2, 4), NMPattern(4, 8))


@dataclass(frozen=True)
class NMViolation:
    """The first group of a weight that breaks an N:M pattern."""

    row: int
    first_column: int
    nonzeros: int
    pattern: NMPattern

    def describe(self) -> str:
        m = self.pattern.m
        return (
            f"row {self.row}, columns {self.first_column}..{self.first_column + m - 1} "
            f"hold {self.nonzeros} non-zeros, more than the {self.pattern.n} "
            f"that {self.pattern} allows"
        )


@dataclass(frozen=True)
class WeightAnalysis:
    shape: tuple[int, ...]
    sparsity: float  # share of entries that are exactly zero
    nm: NMPattern | None  # tightest supported N:M pattern satisfied, if any

    @property
    def pattern_name(self) -> str:
        if self.nm is not None:
            return str(self.nm)
        return "unstructured" if self.sparsity > 0 else "dense"


def _group_nonzero_counts(weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    rows, cols = weight.shape
    groups = (weight != 0).reshape(rows, cols // pattern.m, pattern.m)
    return groups.sum(dim=-1, dtype=torch.int32)


def find_nm_violation(weight: torch.Tensor, pattern: NMPattern) -> NMViolation | None:
    """The first group breaking ``pattern`` (None if the weight satisfies it)."""
    if weight.dim() != 2:
        raise SparsePatternError(f"N:M patterns apply to 2-D weights, got shape {tuple(weight.shape)}")
    if weight.shape[1] % pattern.m:
        raise SparsePatternError(
            f"in_features={weight.shape[1]} is not a multiple of M={pattern.m} for {pattern}"
        )
    counts = _group_nonzero_counts(weight, pattern)
    bad = (counts > pattern.n).nonzero()
    if bad.numel() == 0:
        return None
    row, group = (int(v) for v in bad[0])
    return NMViolation(row, group * pattern.m, int(counts[row, group]), pattern)


def satisfies_nm(weight: torch.Tensor, pattern: NMPattern) -> bool:
    if weight.dim() != 2 or weight.shape[1] % pattern.m:
        return False
    return bool((_group_nonzero_counts(weight, pattern) <= pattern.n).all())


def analyze_weight(weight: torch.Tensor) -> WeightAnalysis:
    """Sparsity and tightest supported N:M pattern of a (dense-stored) weight."""
    total = weight.numel()
    zeros = total - int(torch.count_nonzero(weight))
    sparsity = zeros / total if total else 0.0
    nm = None
    # A pattern is only worth naming when the weight is at least that sparse.
    for pattern in SUPPORTED_NM_PATTERNS:
        if sparsity >= 1 - pattern.density - 1e-9 and satisfies_nm(weight, pattern):
            nm = pattern
            break
    return WeightAnalysis(tuple(weight.shape), sparsity, nm)
