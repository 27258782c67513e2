"""Pluggable transports for truss_stream frames (SSE, chunked HTTP, gRPC, Triton proxy)."""
