"""The Triton thin proxy: its protocol (``multimodal.proto``), server and clients.

- ``transports.triton.multimodal_pb2`` / ``multimodal_pb2_grpc``: the generated protocol.
- ``python -m transports.triton.proxy``: the proxy (see ``docs/triton-proxy.md``).
"""
