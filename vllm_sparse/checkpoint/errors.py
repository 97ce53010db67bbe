"""Errors raised for checkpoints that cannot be served as they are."""


class CheckpointError(ValueError):
    """A checkpoint is malformed or inconsistent. The message names the file,
    tensor or config key at fault and says what is wrong."""
