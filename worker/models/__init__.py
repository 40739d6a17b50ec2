"""The models a worker hosts: the registry, a model served in this process or relayed to a
split model's child, GGUF files and their memory estimate, chat templates, builtin models."""
