"""Layer splits across nodes with llama.cpp's ggml RPC backend.

Helper side: `lender` runs an RPC server child process (`rpc_server`) that lends this node's
device to one head, behind a guard that admits that head's address only: a kernel socket
filter on ggml's own listener (`bpf_guard`), or where that cannot work a forwarder
(`peer_filter`).
Head side: `runner` hosts a split model in a child worker process and relays requests to
it, so a helper that fails (which makes ggml abort its process) costs that model, never the
worker.
"""
