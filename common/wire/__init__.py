"""Conversions between the contract (llamaherd.v1 protobuf) and common's types: one function
per message and direction, shared by both sides. The only part of common that imports
generated code."""
