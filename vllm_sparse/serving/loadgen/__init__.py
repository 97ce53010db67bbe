"""Load generator for ``vllm-sparse bench``: drives the gRPC or the OpenAI HTTP
endpoint and reports throughput and latency percentiles.

workload.py  prompts and the arrival schedule
backends.py  the gRPC and OpenAI clients, yielding token messages
runner.py    concurrency / rate control, timing, error accounting, progress
report.py    percentiles, summary, table, JSON, A/B comparison
bench.py     what the ``bench`` command does with its options
"""
