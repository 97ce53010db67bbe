"""Quality measurements (perplexity) that anyone can rerun."""
