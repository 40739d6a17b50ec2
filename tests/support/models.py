"""Aliases under which the integration worker serves the embedded Gemma model."""

GEMMA = "gemma"
GEMMA_EMBED = "gemma-embed"
N_CTX = 1024
