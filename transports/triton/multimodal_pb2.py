"""The seed's import path of the protocol's messages: :mod:`transports.triton.protocol.multimodal_pb2`.

Generated code lives in :mod:`transports.triton.protocol`; this name stays so that
``from transports.triton import multimodal_pb2`` keeps working. Both names are the same
messages (one descriptor pool entry, one set of classes).
"""

from transports.triton.protocol.multimodal_pb2 import *  # noqa: F403
from transports.triton.protocol.multimodal_pb2 import DESCRIPTOR  # noqa: F401
