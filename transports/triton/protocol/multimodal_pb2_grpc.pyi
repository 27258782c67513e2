"""Typing for multimodal_pb2_grpc.py, written by ``make protos`` (_protogen)."""

import abc
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Generic, TypeVar, overload

import grpc
import grpc.aio

from transports.triton.protocol import multimodal_pb2

_T = TypeVar("_T")

class _MaybeAsyncIterator(AsyncIterator[_T], Iterator[_T], metaclass=abc.ABCMeta): ...

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

class _ServicerContext(  # type: ignore[misc]
    grpc.ServicerContext, grpc.aio.ServicerContext[_Req, _Resp], Generic[_Req, _Resp]
): ...


class MultimodalServiceStub:
    @overload
    def __new__(cls, channel: grpc.Channel) -> MultimodalServiceStub: ...
    @overload
    def __new__(cls, channel: grpc.aio.Channel) -> MultimodalServiceAsyncStub: ...  # type: ignore[misc]
    Chat: grpc.StreamStreamMultiCallable[multimodal_pb2.DataPacket, multimodal_pb2.Ack]
    SendUnary: grpc.UnaryUnaryMultiCallable[multimodal_pb2.DataPacket, multimodal_pb2.Ack]
    ModelMetadata: grpc.UnaryUnaryMultiCallable[multimodal_pb2.ModelMetadataRequest, multimodal_pb2.ModelMetadataResponse]
    ModelReady: grpc.UnaryUnaryMultiCallable[multimodal_pb2.ReadyRequest, multimodal_pb2.ReadyResponse]
    ServerReady: grpc.UnaryUnaryMultiCallable[multimodal_pb2.ReadyRequest, multimodal_pb2.ReadyResponse]

class MultimodalServiceAsyncStub:
    Chat: grpc.aio.StreamStreamMultiCallable[multimodal_pb2.DataPacket, multimodal_pb2.Ack]
    SendUnary: grpc.aio.UnaryUnaryMultiCallable[multimodal_pb2.DataPacket, multimodal_pb2.Ack]
    ModelMetadata: grpc.aio.UnaryUnaryMultiCallable[multimodal_pb2.ModelMetadataRequest, multimodal_pb2.ModelMetadataResponse]
    ModelReady: grpc.aio.UnaryUnaryMultiCallable[multimodal_pb2.ReadyRequest, multimodal_pb2.ReadyResponse]
    ServerReady: grpc.aio.UnaryUnaryMultiCallable[multimodal_pb2.ReadyRequest, multimodal_pb2.ReadyResponse]

class MultimodalServiceServicer:
    def Chat(self, request_iterator: _MaybeAsyncIterator[multimodal_pb2.DataPacket], context: _ServicerContext[multimodal_pb2.DataPacket, multimodal_pb2.Ack]) -> Iterator[multimodal_pb2.Ack] | AsyncIterator[multimodal_pb2.Ack]: ...
    def SendUnary(self, request: multimodal_pb2.DataPacket, context: _ServicerContext[multimodal_pb2.DataPacket, multimodal_pb2.Ack]) -> multimodal_pb2.Ack | Awaitable[multimodal_pb2.Ack]: ...
    def ModelMetadata(self, request: multimodal_pb2.ModelMetadataRequest, context: _ServicerContext[multimodal_pb2.ModelMetadataRequest, multimodal_pb2.ModelMetadataResponse]) -> multimodal_pb2.ModelMetadataResponse | Awaitable[multimodal_pb2.ModelMetadataResponse]: ...
    def ModelReady(self, request: multimodal_pb2.ReadyRequest, context: _ServicerContext[multimodal_pb2.ReadyRequest, multimodal_pb2.ReadyResponse]) -> multimodal_pb2.ReadyResponse | Awaitable[multimodal_pb2.ReadyResponse]: ...
    def ServerReady(self, request: multimodal_pb2.ReadyRequest, context: _ServicerContext[multimodal_pb2.ReadyRequest, multimodal_pb2.ReadyResponse]) -> multimodal_pb2.ReadyResponse | Awaitable[multimodal_pb2.ReadyResponse]: ...

def add_MultimodalServiceServicer_to_server(servicer: MultimodalServiceServicer, server: grpc.Server | grpc.aio.Server) -> None: ...
