"""The seed's import path of the protocol's service: :mod:`transports.triton.protocol.multimodal_pb2_grpc`.

Kept so that ``from transports.triton import multimodal_pb2_grpc`` keeps working; the
stubs, servicer base and registration function are the protocol package's own.
"""

from transports.triton.protocol.multimodal_pb2_grpc import *  # noqa: F403
