"""Start vLLM's OpenAI server (plugin installed) on a checkpoint that must be refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from net import free_port
from vllm_sparse.serving.server_process import OpenAIServer, ServerFailed


def expect_refused(checkpoint: Path, tmp_path: Path, *expected: str, extra_args: list[str] = ()) -> str:
    """The server exits non-zero before serving, and its log holds every ``expected``
    text; returns the log."""
    server = OpenAIServer(checkpoint, free_port(), tmp_path / "server.log", extra_args=list(extra_args),
                          startup_timeout=240)
    with pytest.raises(ServerFailed, match="exited with"):
        server.start()
    assert server.process.returncode != 0
    log = server.log_text()
    for text in expected:
        assert text in log, f"{text!r} not in the server log {tmp_path / 'server.log'}"
    return log
