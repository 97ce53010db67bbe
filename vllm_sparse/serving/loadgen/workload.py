"""What to send and when: prompts (text lines, corpus chunks or random token ids)
and the arrival schedule (all at once, or a seeded Poisson process)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# Random prompts draw ids from [RANDOM_TOKEN_LOW, vocab_size): low ids are where
# most tokenizers keep their special tokens (BOS/EOS/padding/chat markers).
RANDOM_TOKEN_LOW = 100
DEFAULT_VOCAB_SIZE = 32000  # inside the vocabulary of nearly every current LLM


@dataclass(frozen=True)
class Prompt:
    """One prompt: text, or token ids (sent as prompt_token_ids / a token-id list)."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None

    @property
    def known_length(self) -> int | None:
        """Token count when the client knows it (token-id prompts); text prompts
        are counted by the server."""
        return None if self.token_ids is None else len(self.token_ids)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = False


def prompts_from_lines(path: str | Path) -> list[Prompt]:
    """One prompt per non-empty line."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [Prompt(text=line) for line in lines if line]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def prompts_from_corpus(path: str | Path, words: int) -> list[Prompt]:
    """Consecutive chunks of ``words`` whitespace-separated words of a corpus
    (a novel, say): realistic text of a controlled length without a tokenizer."""
    if words < 1:
        raise ValueError("--prompt-words must be >= 1")
    tokens = Path(path).read_text(encoding="utf-8").split()
    chunks = [" ".join(tokens[i:i + words]) for i in range(0, len(tokens) - words + 1, words)]
    if not chunks:
        raise ValueError(f"{path} holds fewer than {words} words")
    return [Prompt(text=chunk) for chunk in chunks]


def random_token_prompts(count: int, input_len: int, seed: int, vocab_size: int = DEFAULT_VOCAB_SIZE) -> list[Prompt]:
    """``count`` prompts of exactly ``input_len`` token ids, reproducible from ``seed``."""
    if input_len < 1:
        raise ValueError("--random-input-len must be >= 1")
    if vocab_size <= RANDOM_TOKEN_LOW:
        raise ValueError(f"--vocab-size must be > {RANDOM_TOKEN_LOW}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(RANDOM_TOKEN_LOW, vocab_size, size=(count, input_len))
    return [Prompt(token_ids=tuple(int(t) for t in row)) for row in ids]


def cycle_prompts(prompts: Sequence[Prompt]) -> Iterator[Prompt]:
    """Requests take the prompts in order and start over when they run out, so a
    duration-bound run never lacks a prompt and both sides of a comparison see the
    same sequence."""
    return itertools.cycle(prompts)


def poisson_arrivals(rate: float, seed: int) -> Iterator[float]:
    """Send times (seconds from the start) of a Poisson process of ``rate``
    requests per second: exponential gaps of mean 1/rate. The first request leaves
    at 0. ``rate`` = inf sends everything at once."""
    if not rate > 0:
        raise ValueError("--request-rate must be > 0")
    if math.isinf(rate):
        yield from itertools.repeat(0.0)
        return
    rng = np.random.default_rng(seed)
    t = 0.0
    yield t
    while True:
        # Drawn in blocks: one numpy call per gap would dominate at high rates.
        for gap in rng.exponential(1.0 / rate, size=1024):
            t += float(gap)
            yield t
