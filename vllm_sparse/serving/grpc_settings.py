"""Settings of the gRPC server, read from the environment of the API server process
(``vllm-sparse serve`` sets them from its command line)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "VLLM_SPARSE_GRPC_"


@dataclass(frozen=True)
class GrpcSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, serve TLS only
    tls_key: Path | None = None
    token: str | None = None  # clients must send "authorization: Bearer <token>"
    max_inflight: int = 256  # concurrent Generate streams before RESOURCE_EXHAUSTED
    shutdown_drain_seconds: float = 1.0  # NOT_SERVING while still answering, before stopping
    shutdown_grace_seconds: float = 5.0  # in-flight streams may finish, then are cancelled

    @classmethod
    def from_env(cls, environ=os.environ) -> "GrpcSettings":
        def get(name: str) -> str | None:
            value = environ.get(ENV_PREFIX + name)
            return value if value else None

        settings = cls(
            host=get("HOST") or cls.host,
            port=_int(get("PORT"), cls.port, "PORT"),
            tls_cert=Path(get("TLS_CERT")) if get("TLS_CERT") else None,
            tls_key=Path(get("TLS_KEY")) if get("TLS_KEY") else None,
            token=_token(get("TOKEN"), get("TOKEN_FILE")),
            max_inflight=_int(get("MAX_INFLIGHT"), cls.max_inflight, "MAX_INFLIGHT"),
            shutdown_drain_seconds=float(get("SHUTDOWN_DRAIN") or cls.shutdown_drain_seconds),
            shutdown_grace_seconds=float(get("SHUTDOWN_GRACE") or cls.shutdown_grace_seconds),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("gRPC TLS needs both a certificate and a key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"gRPC TLS file {path} does not exist")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"gRPC port {self.port} is out of range")
        if self.shutdown_drain_seconds < 0 or self.shutdown_grace_seconds < 0:
            raise ValueError("gRPC shutdown drain and grace periods cannot be negative")
        if self.max_inflight < 1:
            raise ValueError("gRPC max in-flight streams must be at least 1")

    def to_env(self) -> dict[str, str]:
        env = {
            "HOST": self.host, "PORT": str(self.port), "MAX_INFLIGHT": str(self.max_inflight),
            "SHUTDOWN_DRAIN": str(self.shutdown_drain_seconds),
            "SHUTDOWN_GRACE": str(self.shutdown_grace_seconds),
        }
        if self.tls_cert:
            env |= {"TLS_CERT": str(self.tls_cert), "TLS_KEY": str(self.tls_key)}
        if self.token:
            env["TOKEN"] = self.token
        return {ENV_PREFIX + key: value for key, value in env.items()}


def _int(value: str | None, default: int, name: str) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name}={value!r} is not a whole number") from None


def _token(token: str | None, token_file: str | None) -> str | None:
    if token_file:
        return Path(token_file).read_text().strip() or None
    return token
