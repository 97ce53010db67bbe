"""A recall probe built from the corpus itself, in the spirit of LAMBADA: the model
reads a passage and must produce the last word of its final sentence, where that word
appeared earlier in the passage but not earlier in the same sentence (a name, a place,
an object of the story). Pruning tends to break this kind of recall from context
before it shows in perplexity.

Items are chosen deterministically from the text: sentences are split at . ! ? ; an
item needs a target word of at least ``min_letters`` letters (not a common function
word) that occurs in the ``context_words`` words before its sentence; items are taken
evenly spaced over all the candidates.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

_SENTENCE = re.compile(r"[^.!?]+[.!?]+")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
# Frequent words that any continuation could produce: not a test of recall.
_COMMON = frozenset(
    "that this with have from they were there their them then than what when which would could should "
    "about after again been being before more most much must other over said some such very will your "
    "into only upon shall every never always himself herself itself myself nothing something anything "
    "well here know think little great good time thing things while where those these because".split()
)


@dataclass(frozen=True)
class ClozeItem:
    context: str  # the passage up to, not including, the target word
    target: str


def build_cloze_items(text: str, count: int = 64, context_words: int = 120, min_letters: int = 4) -> list[ClozeItem]:
    if not text.strip():
        raise ValueError("the corpus is empty: no cloze items can be built")
    words_before: list[str] = []
    candidates: list[ClozeItem] = []
    flat = " ".join(text.split())
    passage = _Words(flat)
    for match in _SENTENCE.finditer(flat):
        sentence = match.group(0).strip()
        words = _WORD.findall(sentence)
        if words:
            target = words[-1]
            head = sentence[: sentence.rfind(target)]
            earlier = {w.lower() for w in words_before[-context_words:]}
            same_sentence = {w.lower() for w in words[:-1]}
            if (len(target) >= min_letters and target.lower() not in _COMMON and target.lower() in earlier
                    and target.lower() not in same_sentence and head.strip()):
                context = " ".join(passage.before(match.start(), context_words)) + " " + head.rstrip()
                candidates.append(ClozeItem(context.strip(), target))
        words_before.extend(words)
    if not candidates:
        raise ValueError("the corpus has no sentence whose last word appeared just before it: no cloze items")
    if len(candidates) <= count:
        return candidates
    step = len(candidates) / count
    return [candidates[int(i * step)] for i in range(count)]


class _Words:
    """The whitespace-separated words of a text with their offsets, found once, so the
    words before each candidate sentence are cut without splitting the text anew."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        self.starts = [start for start, _ in self.spans]

    def before(self, end: int, count: int) -> list[str]:
        """The last ``count`` words of ``text[:end]`` (punctuation kept; a word cut by
        ``end`` is cut there too), as ``text[:end].split()[-count:]``."""
        words = bisect.bisect_left(self.starts, end)
        return [self.text[start:min(stop, end)] for start, stop in self.spans[max(0, words - count):words]]


def first_word(text: str) -> str:
    match = _WORD.search(text)
    return match.group(0) if match else ""


def cloze_correct(item: ClozeItem, continuation: str) -> bool:
    return first_word(continuation).lower() == item.target.lower()


def load_cloze_items(corpus: str | Path, count: int = 64) -> list[ClozeItem]:
    return build_cloze_items(Path(corpus).read_text(encoding="utf-8"), count)
