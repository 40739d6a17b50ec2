"""`llamaherd bench`: load an OpenAI-compatible endpoint and measure it as vLLM's
`bench serve` and GuideLLM do (TTFT, inter-token latency, TPOT, end-to-end latency,
throughput, goodput at an SLO, per-node share).

Pure parts: `workload` (prompts, arrival schedules, load levels), `metrics` (figures from
per-request records), `report` (result JSON, tables, HTML). I/O: `client` (the streaming
HTTP client), `run` (drives the levels). `cli` is the command line.
"""
