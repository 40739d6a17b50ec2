"""The worker's gRPC surface: the Worker servicer, its server process, the heartbeat link to
the coordinator, request conversion, and a synchronous client."""
