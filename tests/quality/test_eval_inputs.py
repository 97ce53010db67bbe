"""Bad input to `vllm-sparse eval` is refused with a clear error before any engine
starts (the pass runner is replaced by one that fails the test if called)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_sparse.quality import engine_pass, report
from vllm_sparse.quality.report import EvalInputError, ModelSpec, parse_model_specs, run_eval

STORY = " ".join(f"Elinor walked to Barton with Marianne, day {i}. They were glad to see Elinor." for i in range(400))


@pytest.fixture
def no_engine(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("an engine was started for bad input")

    monkeypatch.setattr(engine_pass, "run_pass", refuse)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(STORY)
    return path


def _copy_model(base_model: Path, dst: Path) -> Path:
    shutil.copytree(base_model, dst)
    return dst


def test_unknown_model_dir(base_model, corpus, tmp_path, no_engine):
    with pytest.raises(EvalInputError, match="missing-dir.*no config.json"):
        run_eval([ModelSpec("x", tmp_path / "missing-dir")], base_model, corpus, tmp_path / "out")
    with pytest.raises(EvalInputError, match="reference"):
        run_eval([ModelSpec("x", base_model)], tmp_path / "nothing", corpus, tmp_path / "out")


def test_reference_with_another_vocabulary(base_model, corpus, tmp_path, no_engine):
    from transformers import AutoTokenizer

    other = _copy_model(base_model, tmp_path / "other-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<an-extra-token>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(EvalInputError, match="different tokenizer vocabulary"):
        run_eval([ModelSpec("other", other)], base_model, corpus, tmp_path / "out")

    broken = _copy_model(base_model, tmp_path / "broken-tokenizer")
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(EvalInputError, match="broken-tokenizer.*tokenizer"):
        run_eval([ModelSpec("broken", broken)], base_model, corpus, tmp_path / "out")

    resized = _copy_model(base_model, tmp_path / "other-vocab-size")
    config = json.loads((resized / "config.json").read_text())
    config["vocab_size"] += 64
    (resized / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvalInputError, match="vocab_size"):
        run_eval([ModelSpec("resized", resized)], base_model, corpus, tmp_path / "out")


def test_empty_or_missing_corpus(base_model, tmp_path, no_engine):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EvalInputError, match="empty"):
        run_eval([ModelSpec("same", base_model)], base_model, empty, tmp_path / "out")
    with pytest.raises(EvalInputError, match="not found"):
        run_eval([ModelSpec("same", base_model)], base_model, tmp_path / "absent.txt", tmp_path / "out")


def test_model_specs():
    assert parse_model_specs(["a=/x/y", "/p/q"], "skip.yaml") == [
        ModelSpec("a", Path("/x/y"), "skip.yaml"), ModelSpec("q", Path("/p/q"), "skip.yaml")]
    with pytest.raises(EvalInputError, match="differ"):
        parse_model_specs(["a=/x", "a=/y"])


def test_cli_exits_2_with_the_reason(base_model, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "vllm_sparse.cli", "eval", str(tmp_path / "nope"), "--reference", str(base_model),
         "--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert "nope" in completed.stderr and "no config.json" in completed.stderr
    assert not (tmp_path / "out").exists()
    assert report.EvalSettings().max_model_len >= 512
