from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParameters(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "seed", "has_seed", "stop", "ignore_eos")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HAS_SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    has_seed: bool
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., has_seed: _Optional[bool] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "sampling", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParameters
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finished", "finish_reason", "prompt_tokens", "completion_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finished: bool
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchMetricsRequest(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ...) -> None: ...

class LatencyPercentiles(_message.Message):
    __slots__ = ("p50_seconds", "p90_seconds", "p99_seconds", "samples")
    P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P90_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    p50_seconds: float
    p90_seconds: float
    p99_seconds: float
    samples: int
    def __init__(self, p50_seconds: _Optional[float] = ..., p90_seconds: _Optional[float] = ..., p99_seconds: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "shape", "pattern", "sparsity", "kernel", "dense_bytes", "stored_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    DENSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    pattern: str
    sparsity: float
    kernel: str
    dense_bytes: int
    stored_bytes: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., pattern: _Optional[str] = ..., sparsity: _Optional[float] = ..., kernel: _Optional[str] = ..., dense_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ...) -> None: ...

class LayerSkip(_message.Message):
    __slots__ = ("layer", "skipped", "computed", "skip_ratio", "neurons_dropped", "neurons_kept", "neuron_drop_ratio")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    SKIP_RATIO_FIELD_NUMBER: _ClassVar[int]
    NEURONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    NEURONS_KEPT_FIELD_NUMBER: _ClassVar[int]
    NEURON_DROP_RATIO_FIELD_NUMBER: _ClassVar[int]
    layer: int
    skipped: int
    computed: int
    skip_ratio: float
    neurons_dropped: int
    neurons_kept: int
    neuron_drop_ratio: float
    def __init__(self, layer: _Optional[int] = ..., skipped: _Optional[int] = ..., computed: _Optional[int] = ..., skip_ratio: _Optional[float] = ..., neurons_dropped: _Optional[int] = ..., neurons_kept: _Optional[int] = ..., neuron_drop_ratio: _Optional[float] = ...) -> None: ...

class MetricsSnapshot(_message.Message):
    __slots__ = ("timestamp_seconds", "window_seconds", "requests_per_second", "prompt_tokens_per_second", "generation_tokens_per_second", "time_to_first_token", "inter_token_latency", "end_to_end_latency", "requests_running", "requests_waiting", "requests_finished_total", "model_sparsity", "layers", "ffn_skip_ratio", "ffn_skip", "kernel_layers", "prompt_tokens_total", "generation_tokens_total", "ffn_neuron_drop_ratio")
    class KernelLayersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TIMESTAMP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INTER_TOKEN_LATENCY_FIELD_NUMBER: _ClassVar[int]
    END_TO_END_LATENCY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FINISHED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FFN_SKIP_RATIO_FIELD_NUMBER: _ClassVar[int]
    FFN_SKIP_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FFN_NEURON_DROP_RATIO_FIELD_NUMBER: _ClassVar[int]
    timestamp_seconds: float
    window_seconds: float
    requests_per_second: float
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    time_to_first_token: LatencyPercentiles
    inter_token_latency: LatencyPercentiles
    end_to_end_latency: LatencyPercentiles
    requests_running: int
    requests_waiting: int
    requests_finished_total: int
    model_sparsity: float
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    ffn_skip_ratio: float
    ffn_skip: _containers.RepeatedCompositeFieldContainer[LayerSkip]
    kernel_layers: _containers.ScalarMap[str, int]
    prompt_tokens_total: int
    generation_tokens_total: int
    ffn_neuron_drop_ratio: float
    def __init__(self, timestamp_seconds: _Optional[float] = ..., window_seconds: _Optional[float] = ..., requests_per_second: _Optional[float] = ..., prompt_tokens_per_second: _Optional[float] = ..., generation_tokens_per_second: _Optional[float] = ..., time_to_first_token: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., inter_token_latency: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., end_to_end_latency: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., requests_running: _Optional[int] = ..., requests_waiting: _Optional[int] = ..., requests_finished_total: _Optional[int] = ..., model_sparsity: _Optional[float] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., ffn_skip_ratio: _Optional[float] = ..., ffn_skip: _Optional[_Iterable[_Union[LayerSkip, _Mapping]]] = ..., kernel_layers: _Optional[_Mapping[str, int]] = ..., prompt_tokens_total: _Optional[int] = ..., generation_tokens_total: _Optional[int] = ..., ffn_neuron_drop_ratio: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "quantization", "layers", "model_sparsity", "dense_bytes", "stored_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    DENSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    quantization: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    model_sparsity: float
    dense_bytes: int
    stored_bytes: int
    def __init__(self, model: _Optional[str] = ..., quantization: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., model_sparsity: _Optional[float] = ..., dense_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ...) -> None: ...
