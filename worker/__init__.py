"""llamaherd worker: the data plane that hosts GGUF models on one node and serves them over gRPC."""
