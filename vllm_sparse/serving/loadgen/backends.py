"""Clients of the two endpoints. Each turns one request into an async stream of
``Message``s; the runner timestamps them, so timing is done the same way for both.

A backend raises ``RequestError`` (with a short ``kind`` used to count errors) for
a failure it recognises; the runner counts any other exception by its type name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from .workload import GenerationParams, Prompt


class RequestError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Message:
    """One streamed message: the tokens it adds, and the server's counts if it sent any."""

    tokens: int
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # generated so far, as the server counts them


# ---------------------------------------------------------------- gRPC


class _GrpcClient:
    """One HTTP/2 channel (requests are multiplexed on it, as a real client would
    do), plaintext or TLS, with the bearer token sent as metadata on every call."""

    def __init__(self, target: str, token: str | None = None, tls_ca: str | Path | None = None,
                 tls_server_name: str | None = None) -> None:
        self.target = target
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls_ca = tls_ca
        self._tls_server_name = tls_server_name
        self._channel = None
        self._stub = None

    def _make_stub(self, channel):
        raise NotImplementedError

    async def start(self) -> None:
        import grpc

        options = [("grpc.ssl_target_name_override", self._tls_server_name)] if self._tls_server_name else []
        if self._tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(self._tls_ca).read_bytes())
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self._stub = self._make_stub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def _stream(self, call, to_messages) -> AsyncIterator[Message]:
        """The call's responses as Messages; a gRPC error as RequestError."""
        import grpc

        try:
            async for response in call:
                for message in to_messages(response):
                    yield message
        except grpc.aio.AioRpcError as exc:
            raise RequestError(f"grpc {exc.code().name}", exc.details() or "") from None
        finally:
            call.cancel()  # no-op when the stream ended; frees the stream on timeout


class GrpcBackend(_GrpcClient):
    """``vllm_sparse.v1.SparseServing/Generate``."""

    name = "grpc"

    def _make_stub(self, channel):
        from ..proto import sparse_serving_pb2_grpc

        return sparse_serving_pb2_grpc.SparseServingStub(channel)

    def generate(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Message]:
        from ..proto import sparse_serving_pb2 as pb

        request = pb.GenerateRequest(sampling=pb.SamplingParameters(
            max_tokens=params.max_tokens, temperature=params.temperature, ignore_eos=params.ignore_eos))
        if prompt.token_ids is not None:
            request.prompt_token_ids.extend(prompt.token_ids)
        else:
            request.prompt = prompt.text

        def to_messages(response):
            # proto3 has no "unset" for scalars: 0 means the server did not say.
            yield Message(tokens=len(response.token_ids), text=response.text,
                          prompt_tokens=response.prompt_tokens or None,
                          completion_tokens=response.completion_tokens or None)

        return self._stream(self._stub.Generate(request, metadata=self._metadata), to_messages)


class VllmGrpcBackend(_GrpcClient):
    """vLLM's own gRPC protocol, ``vllm.grpc.engine.VllmEngine/Generate`` (streamed),
    through the generated client of ``smg-grpc-proto``: any server that speaks it
    (``vllm-sparse serve``, ``python -m vllm.entrypoints.launchers.grpc_server``).
    The protocol carries token ids only; text is for the router to detokenise."""

    name = "vllm-grpc"

    def _make_stub(self, channel):
        from smg_grpc_proto import vllm_engine_pb2_grpc

        return vllm_engine_pb2_grpc.VllmEngineStub(channel)

    def generate(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Message]:
        import uuid

        from smg_grpc_proto import vllm_engine_pb2 as ve

        sampling = ve.SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens,
                                     ignore_eos=params.ignore_eos)
        request = ve.GenerateRequest(request_id=f"bench-{uuid.uuid4().hex}", stream=True, sampling_params=sampling)
        if prompt.token_ids is not None:
            request.tokenized.input_ids.extend(prompt.token_ids)
        else:
            request.text = prompt.text

        def to_messages(response):
            # A chunk per engine step with its new tokens, then ``complete``, which
            # repeats the last step's. When streaming, the servicer's counts are
            # per message too (the router adds them up), so the tokens are
            # counted here and only the prompt length is taken from the server.
            message = response.chunk if response.HasField("chunk") else response.complete
            yield Message(tokens=len(response.chunk.token_ids) if response.HasField("chunk") else 0,
                          prompt_tokens=message.prompt_tokens or None)

        return self._stream(self._stub.Generate(request, metadata=self._metadata), to_messages)


# ---------------------------------------------------------------- OpenAI HTTP


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed bytes as they arrive (split
    anywhere, even inside a line or a UTF-8 character), get back the ``data`` of
    each complete event. Comments (``:`` lines, used as keep-alive pings) and the
    other fields (``event``, ``id``, ``retry``) are dropped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:  # a blank line ends the event
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                if field == "data":
                    self._data.append(value[1:] if value.startswith(" ") else value)
        return events


def parse_completion_event(data: str) -> Message:
    """One ``/v1/completions`` stream event as a Message.

    OpenAI-style servers (vLLM included) send one chunk per generated token, so a
    chunk with a choice counts as one token unless it lists its ``token_ids`` (vLLM
    with ``return_token_ids``). The usage chunk (``stream_options.include_usage``)
    carries no choice and gives the server's own counts."""
    event = json.loads(data)
    if "error" in event:
        error = event["error"]
        raise RequestError("stream error", error.get("message", str(error)) if isinstance(error, dict) else str(error))
    tokens, text = 0, ""
    for choice in event.get("choices") or []:
        ids = choice.get("token_ids")
        tokens += len(ids) if ids is not None else 1
        text += choice.get("text") or ""
    usage = event.get("usage") or {}
    return Message(tokens=tokens, text=text, prompt_tokens=usage.get("prompt_tokens"),
                   completion_tokens=usage.get("completion_tokens"))


class OpenAIBackend:
    """``POST {base_url}/v1/completions`` with ``stream: true``."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = None

    async def start(self) -> None:
        import aiohttp

        # No connection cap and no client timeout here: the runner bounds
        # concurrency and applies the per-request timeout itself.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None),
            headers=self._headers)
        if self.model is None:  # the server's first model, as vLLM's own client does
            async with self._session.get(f"{self.base_url}/v1/models") as response:
                if response.status != 200:
                    raise RequestError(f"HTTP {response.status}", f"GET /v1/models: {await response.text()}")
                self.model = (await response.json())["data"][0]["id"]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def request_body(self, prompt: Prompt, params: GenerationParams) -> dict:
        body = {
            "model": self.model,
            # A list of ints is a pre-tokenised prompt in the OpenAI API.
            "prompt": list(prompt.token_ids) if prompt.token_ids is not None else prompt.text,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.ignore_eos:
            body["ignore_eos"] = True  # a vLLM extension; plain OpenAI servers lack it
        return body

    async def generate(self, prompt: Prompt, params: GenerationParams) -> AsyncIterator[Message]:
        url = f"{self.base_url}/v1/completions"
        async with self._session.post(url, json=self.request_body(prompt, params)) as response:
            if response.status != 200:
                raise RequestError(f"HTTP {response.status}", (await response.text())[:300])
            parser = SSEParser()
            async for chunk in response.content.iter_any():
                for data in parser.feed(chunk):
                    if data == "[DONE]":
                        return
                    yield parse_completion_event(data)
