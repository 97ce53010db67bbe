"""Cloze items come from the corpus deterministically and test recall from context."""

from __future__ import annotations

import pytest

from vllm_sparse.quality.cloze import build_cloze_items, cloze_correct, first_word

STORY = " ".join(
    f"Elinor walked to the village of Barton with her sister number {i}. The weather was mild and the road was "
    f"long. At last they saw the cottage. Everyone there was glad to see Elinor. They spoke of Barton for an hour."
    for i in range(30)
) + " Suddenly a stranger arrived with a parrot. " + " ".join(
    f"Marianne read a book about the sea in chapter {i}. She closed the book." for i in range(10))


def test_items_are_deterministic_and_need_the_context():
    first = build_cloze_items(STORY, count=10)
    again = build_cloze_items(STORY, count=10)
    assert first == again
    assert 0 < len(first) <= 10
    for item in first:
        assert item.target.lower() in item.context.lower()  # recallable from the passage
        sentence_head = item.context.rsplit(".", 1)[-1]
        assert item.target.lower() not in sentence_head.lower()  # but not from its own sentence
    every = build_cloze_items(STORY, count=10_000)
    assert "parrot" not in {item.target for item in every}  # never mentioned before its sentence
    assert "book" in {item.target for item in every}  # mentioned in the sentence before


def test_items_are_spread_over_the_corpus():
    items = build_cloze_items(STORY, count=5)
    all_items = build_cloze_items(STORY, count=10_000)
    assert len(all_items) > len(items) == 5
    assert items[0] == all_items[0] and items[-1] != all_items[-1]


def test_scoring_reads_the_first_word():
    item = build_cloze_items(STORY, count=1)[0]
    assert cloze_correct(item, f" {item.target.lower()}. And then")
    assert not cloze_correct(item, " the road")
    assert first_word("  \n'Marianne' said") == "Marianne"


def test_bad_corpora_are_refused():
    with pytest.raises(ValueError, match="empty"):
        build_cloze_items("   \n")
    with pytest.raises(ValueError, match="no cloze items"):
        build_cloze_items("A cat sat. A dog ran. Birds sang loudly.")
