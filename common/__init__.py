"""What the worker and the control plane share: the status model and its figures, model
settings, errors, addresses, and (in common.wire) their protobuf form. No llama.cpp and no
psutil: the coordinator imports this without pulling in a node's libraries."""
