"""Generated gRPC contract of llamaherd. The sources are the .proto files in v1/."""
