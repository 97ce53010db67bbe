"""Run vLLM's OpenAI-compatible HTTP server as a child process (its normal
multi-process mode) and wait until it is ready."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..runtime import OFFLINE_DEFAULTS


class ServerFailed(RuntimeError):
    pass


class OpenAIServer:
    """``with OpenAIServer(model, port, log_path) as server: server.complete(...)``."""

    def __init__(self, model: str | Path, port: int, log_path: Path, extra_args: list[str] = (), env: dict | None = None,
                 startup_timeout: float = 300.0) -> None:
        self.model = str(model)
        self.port = port
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.env = {**OFFLINE_DEFAULTS, **os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", "1024", "--enforce-eager", *self.extra_args,
        ]

    def start(self) -> "OpenAIServer":
        command = self.command()
        self._log = self.log_path.open("w")
        # A session of its own, so stopping the server also stops its engine processes.
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"server exited with {self.process.returncode}; log: {self.log_path}")
            if self.ready():
                return self
            time.sleep(1.0)
        self.stop()
        raise ServerFailed(f"server not ready after {self.startup_timeout:.0f} s; log: {self.log_path}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
            # HTTPException: something other than our server answered on the port (it
            # then fails to bind, and start() reports its exit with the log).
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def post(self, path: str, body: dict, timeout: float = 120.0) -> dict:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def complete(self, prompt: str, max_tokens: int = 32) -> str:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        return self.post("/v1/completions", body)["choices"][0]["text"]

    def chat(self, question: str, max_tokens: int = 60) -> str:
        """One greedy answer through the model's chat template (/v1/chat/completions)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": question}],
                "max_tokens": max_tokens, "temperature": 0.0}
        return self.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class SparseServer(OpenAIServer):
    """``vllm-sparse serve``: the OpenAI server plus our gRPC server."""

    def __init__(self, model, port: int, grpc_port: int, log_path: Path, grpc_args: list[str] = (), **kwargs) -> None:
        super().__init__(model, port, log_path, **kwargs)
        self.grpc_port = grpc_port
        self.grpc_args = list(grpc_args)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm_sparse.cli", "serve", self.model,
            "--grpc-port", str(self.grpc_port), *self.grpc_args,
            "--port", str(self.port), "--max-model-len", "1024", "--enforce-eager", *self.extra_args,
        ]

    def get(self, path: str, timeout: float = 30.0) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return response.read().decode()


class VllmGrpcLauncher(OpenAIServer):
    """Stock vLLM's gRPC server, ``python -m vllm.entrypoints.launchers.grpc_server``
    (smg-grpc-servicer's VllmEngine servicer over AsyncLLM; vllm 0.32), with
    whatever vLLM plugins are installed (ours among them). No HTTP: ready when the
    standard gRPC health service answers SERVING, which it does once the
    servicer's planned warm-up (``SMG_VLLM_SERVICER_WARMUP``) is over."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.launchers.grpc_server",
            "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", "1024", "--enforce-eager", *self.extra_args,
        ]

    def ready(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
