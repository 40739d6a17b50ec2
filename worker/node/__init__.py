"""Facts about this node: its capability profile, reference speed and /metrics server."""
