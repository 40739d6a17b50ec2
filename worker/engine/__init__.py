"""The batching engine: sequence slots, continuous batching over a backend, request and event
types, sampling parameters, text streaming with stop strings."""
