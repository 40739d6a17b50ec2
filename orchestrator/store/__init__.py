"""The coordinator's model store: GGUF files indexed in SQLite (index), put there from a
local file or an HTTP(S) mirror (ingest), summarised from their headers (summary) and
served to workers over HTTP with ranges (server)."""
