"""The committed gRPC code matches its .proto (regenerate with scripts/gen_proto.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = "vllm_sparse/serving/proto/sparse_serving.proto"


def test_generated_module_describes_the_proto_as_it_is(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")  # a test extra (pyproject.toml)
    from google.protobuf import descriptor_pb2

    from vllm_sparse.serving.proto import sparse_serving_pb2

    out = tmp_path / "descriptor.pb"
    assert protoc.main(["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", str(ROOT / PROTO)]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _clear_json_names(fresh.message_type)  # the generated code leaves out the derived JSON names
    committed = descriptor_pb2.FileDescriptorProto.FromString(sparse_serving_pb2.DESCRIPTOR.serialized_pb)
    # Compared as descriptors, not as text: the generated code's layout changes with
    # the grpcio-tools version, the messages and fields it describes do not.
    assert committed == fresh, "stale: run scripts/gen_proto.sh"


def _clear_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)
