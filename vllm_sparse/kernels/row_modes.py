"""Row modes of the neuron-level MLP (``vllm_sparse::neuron_mlp``, int8 per row):
every neuron, drop those under the threshold, or skip the whole row (exact zeros).
Here, apart from the kernel, so callers need not import triton."""

ROW_FULL, ROW_DROP_NEURONS, ROW_SKIPPED = 0, 1, 2
