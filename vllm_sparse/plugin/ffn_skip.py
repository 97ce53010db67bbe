"""FFN skipping inside vLLM (Llama, Qwen2, Mistral decoder layers; gate/up/down MLP).

How it hooks in (the least we found; every internal is listed in vllm_internals.py):

* ``register_models()`` (called by ``register()`` only when ``VLLM_SPARSE_FFN_SKIP``
  is set) re-registers the three architectures with ``ModelRegistry`` as thin
  subclasses of vLLM's own classes (``ffn_skip_models.py``). Without the variable
  nothing is registered and vLLM is untouched.
* Those subclasses call ``install()`` at the end of ``__init__``. It reads the profile
  named by the variable; when it is enabled it patches three *instance* ``forward``
  attributes per decoder layer (no module is replaced, so weight names and loading
  are unchanged): the layer's (to read the row positions and start a new pass at the
  first layer), ``post_attention_layernorm``'s (to read the residual stream entering
  the FFN, the fused norm's second output) and ``mlp``'s (the skip step from
  ``vllm_sparse.skip.decision``, shared with the transformers path).
* Which rows are prompt tokens comes from the attention metadata of the forward
  context: a row whose request has more than one query token in this step is a
  prefill (or prefill-chunk) row; a request with one query token is decoding.
  Limitation: a prefill chunk of exactly one token counts as decoding (it can only
  skip if it is past warm-up); speculative decoding's multi-token verify steps count
  as prefill (they never skip unless ``skip_prompt``).

On CPU, once the weights are loaded (``after_loading``, vLLM's model-level post-load
hook), each layer's skip-aware MLP is one C++ op (``ffn_skip_op``): the decision, the
countdowns and the MLP on tensors, the same call in eager and compiled mode, nothing
read back to Python per layer. Where the op cannot run a projection (CUDA, quantized
layers, tensor parallelism) the Python step below runs instead: eager, as plain
Python; compiled, inside the opaque custom op ``vllm_sparse::ffn_skip_step`` (same
decisions and tokens as eager, but its host-side decisions cost more than a skipped
FFN saves). Its neuron-level skipping is ffn_skip_neuron.py. CUDA graphs are refused at start-up: a captured graph would replay one
batch's host-side decisions for every batch.
"""

from __future__ import annotations

import logging
import os

import torch

from ..skip.decision import SkipRun
from ..skip.fused import fused_skip_mlp
from ..skip.policy import ENV_VAR, SkipPolicy, SkipPolicyError, policy_from_env
from . import batch_rows, ffn_skip_op
from . import vllm_internals as vi
from .batch_rows import enable_trace, query_rows_prompt  # noqa: F401  (enable_trace: the test hook)
from .ffn_skip_neuron import NeuronMLP
from .worker_metrics import record_ffn_blocks, record_ffn_neurons

logger = logging.getLogger(vi.LOGGER_NAME)

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


def take_trace() -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    ffn_skip_op.flush_all()  # the op path hands a pass's decisions on at the next pass
    return batch_rows.take_trace()


def register_models() -> None:
    """Point vLLM's Llama/Qwen2/Mistral architectures at our subclasses, if the user
    asked for FFN skipping. The profile is loaded (and checked) here too, so a bad
    one stops the main process before any engine starts."""
    if not os.environ.get(ENV_VAR, "").strip():
        return
    policy_from_env()
    for arch in ARCHITECTURES:
        vi.ModelRegistry.register_model(arch, f"vllm_sparse.plugin.ffn_skip_models:{arch}")


def _row_is_prompt(rows: int, device: torch.device) -> torch.Tensor | None:
    """Per row: is it a prompt token (padding rows count as prompt rows)? None
    outside a real batch."""
    is_prompt = query_rows_prompt(device)
    if is_prompt is None:
        return None
    if is_prompt.shape[0] < rows:  # padding rows: compute them, never count them as skipped
        is_prompt = torch.cat([is_prompt, is_prompt.new_ones(rows - is_prompt.shape[0])])
    return is_prompt[:rows]


class _ModelSkip:
    """Per-model state: the policy and the current forward pass."""

    def __init__(self, policy: SkipPolicy, num_layers: int, first_layer: int) -> None:
        self.policy = policy
        self.num_layers = num_layers
        self.first_layer = first_layer
        self.run: SkipRun | None = None
        self.real_batch = False
        self.positions: torch.Tensor | None = None  # of the current pass (flat), for the trace
        self.layer_positions: torch.Tensor | None = None  # what the current layer was called with
        self.residual: torch.Tensor | None = None  # the residual stream entering the current FFN
        self.mlps: dict[int, tuple] = {}  # layer -> (MLP forward, fused MLP or None)
        self.key_module: torch.nn.Module | None = None  # compiled: holds the buffer ffn_skip_key

    def start(self, positions: torch.Tensor) -> None:
        positions = positions.reshape(-1)
        is_prompt = _row_is_prompt(positions.shape[0], positions.device)
        self.real_batch = is_prompt is not None
        if is_prompt is None:
            is_prompt = torch.ones_like(positions, dtype=torch.bool)
        self.positions = positions
        self.run = SkipRun.start(self.policy, self.num_layers, positions, is_prompt)

    def step(self, layer: int, x: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s skip-aware FFN; the first layer's call starts the pass."""
        if layer == self.first_layer:
            self.start(positions)
        mlp, fused = self.mlps[layer]
        out, skipped, computed = self.run.ffn(layer, x, residual, mlp, fused)
        neurons = mlp.take_counts() if isinstance(mlp, NeuronMLP) else (0, 0)
        if self.real_batch:
            record_ffn_blocks(layer, skipped, computed)
            if any(neurons):
                record_ffn_neurons(layer, *neurons)
            if batch_rows.tracing():
                batch_rows.append_trace(layer, self.positions.clone().cpu(), self.run.last_skip)
        return out


# Compiled mode: the models of this process, found by the op below through the index
# a buffer of the model holds (data, so a graph loaded from vLLM's compile cache in
# another process finds that process's model).
_MODELS: list[_ModelSkip] = []


@torch.library.custom_op("vllm_sparse::ffn_skip_step", mutates_args=())
def ffn_skip_step(x: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, model: torch.Tensor,
                  layer: int) -> torch.Tensor:
    """``_ModelSkip.step``, opaque to torch.compile: the per-row decision reads
    similarities on the host, which no traced graph can hold."""
    return _MODELS[int(model)].step(layer, x, residual, positions)


@ffn_skip_step.register_fake
def _ffn_skip_step_fake(x, residual, positions, model, layer):
    return torch.empty_like(x)


def _fused_mlp(mlp):
    """The fused skip-aware Triton MLP (vllm_sparse.kernels) for a dense, unsharded
    gate_up/down pair on CUDA; None where it does not apply (CPU: the torch gather
    path is used)."""
    gate_up, down = mlp.gate_up_proj, mlp.down_proj
    weight, down_weight = getattr(gate_up, "weight", None), getattr(down, "weight", None)
    if weight is None or down_weight is None or weight.device.type != "cuda":
        return None
    if not isinstance(gate_up.quant_method, vi.UnquantizedLinearMethod) or gate_up.bias is not None \
            or down.bias is not None or getattr(gate_up, "tp_size", 1) != 1:
        return None
    return fused_skip_mlp(lambda: gate_up.weight, lambda: down.weight)


def _patch_layer(state: _ModelSkip, op_state: ffn_skip_op.OpSkip | None, index: int, layer, compiled: bool) -> None:
    """The hooks keep the layer's positions and the residual stream and hand them,
    with the FFN input, to the skip step: on CPU, once loading has found every
    projection runnable by it, the one-op step (``ffn_skip_op``), eager or compiled;
    otherwise ``_ModelSkip.step``, directly when eager and, compiled, through the
    opaque ``vllm_sparse::ffn_skip_step`` op."""
    layer_forward = layer.forward
    norm_forward = layer.post_attention_layernorm.forward
    threshold = state.policy.neuron_threshold(index)
    if threshold > 0:  # neuron-level skipping in the Python step (the C++ op has its own)
        neuron = NeuronMLP(layer.mlp, threshold, lambda: state.run.may_skip_rows())
        state.mlps[index] = (neuron, neuron.fused)
    else:
        state.mlps[index] = (layer.mlp.forward, _fused_mlp(layer.mlp))

    def forward(positions, *args, **kwargs):
        state.layer_positions = positions
        return layer_forward(positions, *args, **kwargs)

    def norm(*args, **kwargs):
        out = norm_forward(*args, **kwargs)
        # vLLM's fused add+RMSNorm returns (normed, residual); the first layer's
        # caller has already added, and the residual is what the FFN updates.
        state.residual = out[1] if isinstance(out, tuple) else args[0]
        return out

    def mlp(x):
        if op_state is not None and op_state.projections:
            return op_state.step(index, x, state.residual, state.layer_positions)
        if compiled:
            key = state.key_module.ffn_skip_key
            return torch.ops.vllm_sparse.ffn_skip_step(x, state.residual, state.layer_positions, key, index)
        return state.step(index, x, state.residual, state.layer_positions)

    layer.forward = forward
    layer.post_attention_layernorm.forward = norm
    layer.mlp.forward = mlp


def install(model, vllm_config) -> SkipPolicy | None:
    """Install FFN skipping on a freshly built vLLM model, per the profile in the
    environment. Returns the policy in force (None when none is)."""
    policy = policy_from_env()
    if policy is None or not policy.enabled:
        return None
    layers = model.model.layers
    num_layers = vllm_config.model_config.hf_config.num_hidden_layers
    policy.validate(num_layers, source=os.environ[ENV_VAR])
    compilation = vllm_config.compilation_config
    compiled = compilation.mode != vi.CompilationMode.NONE
    if compiled and compilation.cudagraph_mode != vi.CUDAGraphMode.NONE:
        raise SkipPolicyError(
            f"{ENV_VAR}={os.environ[ENV_VAR]}: FFN skipping decides per token on the host at every "
            "layer, which a captured CUDA graph would replay unchanged for every batch; start vLLM "
            "with enforce_eager=True (--enforce-eager) or without CUDA graphs "
            "(--compilation-config '{\"cudagraph_mode\": \"NONE\"}'), or use a profile with enabled: false")
    local = [(i, layer) for i, layer in enumerate(layers) if hasattr(layer, "mlp")]
    for _, layer in local:
        if not (hasattr(layer.mlp, "gate_up_proj") and hasattr(layer.mlp, "down_proj")
                and hasattr(layer, "post_attention_layernorm")):
            raise SkipPolicyError(f"FFN skipping supports gate/up/down MLPs only; {type(layer).__name__} has none")
    state = _ModelSkip(policy, num_layers, first_layer=local[0][0])
    if compiled:
        _MODELS.append(state)
        state.key_module = local[0][1].mlp
        state.key_module.register_buffer("ffn_skip_key", torch.tensor([len(_MODELS) - 1]), persistent=False)
    op_state = None
    if vi.current_platform.is_cpu():
        op_state = ffn_skip_op.OpSkip(policy, num_layers, local[0][0], {i: layer.mlp for i, layer in local},
                                      max_rows=vllm_config.scheduler_config.max_num_batched_tokens)
        model._vllm_sparse_ffn_skip_op = op_state  # picked up by after_loading()
    for index, layer in local:
        _patch_layer(state, op_state, index, layer, compiled)
    logger.info("FFN skipping on: %s (%d layers, hot %d..%d)", policy, num_layers,
                policy.cold_start, num_layers - policy.cold_end - 1)
    return policy


def weights_loaded(model) -> None:
    """Right after vLLM's ``load_weights``, while the dense weights are still plain
    tensors: keep the ones the one-row neuron-level kernel reads (``ffn_skip_op``)."""
    op_state: ffn_skip_op.OpSkip | None = getattr(model, "_vllm_sparse_ffn_skip_op", None)
    if op_state is not None:
        op_state.keep_neuron_weights()


def after_loading(model) -> None:
    """Once the weights are in their final form (vLLM's model-level post-load hook):
    on CPU, find how the op runs each projection; where it cannot, say why and keep
    the Python step."""
    op_state: ffn_skip_op.OpSkip | None = getattr(model, "_vllm_sparse_ffn_skip_op", None)
    if op_state is None:
        return
    projections, why = ffn_skip_op.OpSkip.resolve(op_state.mlps)
    if projections is None:
        logger.warning("FFN skipping: the one-op CPU step cannot run here (%s); each layer's skip step runs "
                       "in Python instead, which costs more than it saves in compiled mode", why)
        return
    op_state.projections = projections
    op_state.register()
    kinds = sorted({p.name for pair in projections.values() for p in pair})
    logger.info("FFN skipping: one op per layer (vllm_sparse::cpu_skip_mlp); projections run %s", ", ".join(kinds))
