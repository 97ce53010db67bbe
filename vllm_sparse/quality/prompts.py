"""The prompts used wherever two servings of the same weights are compared by
their greedy continuations (tests and benchmarks)."""

GREEDY_PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
    "The most important lesson I learned at school was",
    "def fibonacci(n):",
    "Photosynthesis is the process by which",
    "My favourite season of the year is",
    "The three primary colours are",
)
