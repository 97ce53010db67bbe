"""Start vLLM's OpenAI server (plugin installed) on checkpoints that must be refused,
several side by side."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from net import free_port
from vllm_sparse.serving.server_process import OpenAIServer, ServerFailed


@dataclass
class Start:
    """How one server start ended: the exception it raised (None: it served), its
    exit status and its log."""

    failure: BaseException | None
    returncode: int | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_refused(self, *expected: str) -> str:
        assert isinstance(self.failure, ServerFailed) and "exited with" in str(self.failure), self.failure
        assert self.returncode != 0
        log = self.log()
        for text in expected:
            assert text in log, f"{text!r} not in the server log {self.log_path}"
        return log


def start_side_by_side(checkpoints: dict[str, Path], tmp_path: Path, extra_args: list[str] = ()) -> dict[str, Start]:
    """Start a server on each checkpoint, all at once, and stop any that came up. A
    refused start is mostly three processes importing vLLM and exiting, which two
    cores overlap: five side by side took 117 s here against 147 s one by one."""
    servers = {name: OpenAIServer(path, free_port(), tmp_path / f"{name}.log", extra_args=list(extra_args),
                                  startup_timeout=300) for name, path in checkpoints.items()}
    with ThreadPoolExecutor(len(servers)) as pool:
        futures = {name: pool.submit(server.start) for name, server in servers.items()}
    starts = {}
    for name, server in servers.items():
        failure = futures[name].exception()
        server.stop()
        starts[name] = Start(failure, server.process.returncode, server.log_path)
    return starts
