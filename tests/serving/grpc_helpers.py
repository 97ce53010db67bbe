"""Small helpers shared by the gRPC tests."""

from __future__ import annotations

import datetime
import re

import grpc

from net import free_port  # noqa: F401  (re-exported for the gRPC tests)

from vllm_sparse.serving.proto import sparse_serving_pb2 as pb
from vllm_sparse.serving.proto import sparse_serving_pb2_grpc as pb_grpc


def generate_request(prompt: str = "The capital of France is", max_tokens: int = 16, **sampling) -> pb.GenerateRequest:
    params = {"temperature": 0.0, "ignore_eos": True, **sampling}
    return pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParameters(max_tokens=max_tokens, **params))


def stub(channel: grpc.Channel) -> pb_grpc.SparseServingStub:
    return pb_grpc.SparseServingStub(channel)


def vllm_engine_stream(client, request, timeout: float = 120) -> tuple[list[int], object]:
    """A streamed VllmEngine Generate: (all chunk token ids, the closing ``complete``)."""
    tokens, complete = [], None
    for response in client.Generate(request, timeout=timeout):
        if response.HasField("chunk"):
            tokens.extend(response.chunk.token_ids)
        else:
            complete = response.complete
    return tokens, complete


def prometheus_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text format whose labels include
    ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def self_signed_certificate(hostname: str) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) of a throw-away certificate for ``hostname``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)
