"""Serving: running vLLM's servers with the plugin, and talking to them."""
