"""Layer splits across nodes with llama.cpp's ggml RPC backend.

Helper side: `lender` runs an RPC server child process (`rpc_server`) that lends this node's
device to one head, behind a filter that admits that head's address only (`peer_filter`).
Head side: `runner` hosts a split model in a child worker process and relays requests to
it, so a helper that fails (which makes ggml abort its process) costs that model, never the
worker.
"""
