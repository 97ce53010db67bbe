"""``vllm-sparse serve``: vLLM's OpenAI-compatible HTTP server and our gRPC server
over one engine, with every figure on the one ``/metrics``.

It runs ``python -m vllm.entrypoints.openai.api_server`` (vLLM's own server, all its
arguments accepted unchanged) with our plugins allow-listed, Prometheus multiprocess
mode on (so worker-side figures reach /metrics) and the gRPC settings in the
environment; it forwards SIGTERM/SIGINT and cleans up its run folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..plugin.run_files import RUN_DIR_ENV
from .grpc_settings import GrpcSettings

# Entry-point names from pyproject.toml.
OUR_PLUGINS = ("vllm_sparse", "vllm_sparse_grpc", "vllm_sparse_stats")


def allowed_plugins(current: str | None) -> str:
    """Our plugins added to a VLLM_PLUGINS allow-list (endpoint plugins load only
    when named there). An unset list allowed every general plugin: keep that open
    by naming ours only when the user had a list."""
    names = [name for name in (current or "").split(",") if name]
    return ",".join(dict.fromkeys([*names, *OUR_PLUGINS]))


def vllm_command(model: str, vllm_args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    if "--host" not in vllm_args:
        command += ["--host", "127.0.0.1"]  # loopback unless told otherwise
    return command + vllm_args


def serve(model: str, vllm_args: list[str], grpc: GrpcSettings, ffn_skip_profile: str | None = None) -> int:
    grpc.validate()
    run_dir = Path(tempfile.mkdtemp(prefix="vllm-sparse-run-"))
    env = dict(os.environ)
    env[RUN_DIR_ENV] = str(run_dir)
    env["VLLM_PLUGINS"] = allowed_plugins(os.environ.get("VLLM_PLUGINS"))
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        (run_dir / "prometheus").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "prometheus")
    env.update(grpc.to_env())
    if ffn_skip_profile:
        env["VLLM_SPARSE_FFN_SKIP"] = str(Path(ffn_skip_profile).resolve())
    process = subprocess.Popen(vllm_command(model, vllm_args), env=env)

    def forward(signum, _frame):
        if process.poll() is None:
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return process.wait()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
