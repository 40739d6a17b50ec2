"""llamaherd.v1: stubs generated from the .proto files in this folder (never edited by hand)."""
