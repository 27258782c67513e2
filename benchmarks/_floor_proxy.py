"""The floor of any Python ``grpc.aio`` proxy for ``MultimodalService.Chat``, for benchmarks.

What every Python proxy in front of Triton pays per frame whatever it is written like:
grpc.aio reads a ``DataPacket`` off the client's ``Chat`` stream, the packet becomes a
``ModelInferRequest`` sent to Triton as one unary ``ModelInfer`` call, and the response
becomes an ``Ack`` written back on the stream. Nothing else: no validation, no limits, no
budgets, no metrics, no access log, no cancellation handling, a fixed JSON body, one task
per packet. Not a server to deploy: ``benchmarks/bench_triton.py`` runs it next to the real
proxy, same client, same Triton, so the difference in CPU per frame between the two is the
real proxy's own work and the rest is grpc.aio's (and the kernel's) per-message work.

With ``--stream`` the packets of one Chat call go to Triton over one ``ModelStreamInfer``
stream instead (a write and a read per packet instead of a unary call): the floor of a
proxy built that way.

Run: ``python -m benchmarks._floor_proxy --listen 127.0.0.1:0 --triton-url HOST:PORT
[--stream]``; prints ``LISTENING <host:port>``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg

_JSON = '{{"backend":"triton","cid":"{}","model":"{}","model_version":"{}","outputs":{{{}}}}}'
_DTYPES = {"FP32": pb.DT_FP32, "INT32": pb.DT_INT32, "UINT8": pb.DT_UINT8, "INT64": pb.DT_INT64}


class FloorProxy(pbg.MultimodalServiceServicer):
    """Chat only: packet in, one ModelInfer, Ack out."""

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, stream: bool) -> None:
        self._stub = stub
        self.stream = stream

    def _ack(self, packet: pb.DataPacket, response: Any) -> pb.Ack:
        control = packet.control
        outputs = [
            pb.NamedTensor(
                name=out.name,
                dtype=_DTYPES.get(out.datatype, pb.DT_UNSPECIFIED),
                shape=pb.Shape(dims=out.shape),
                data=raw,
            )
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        ]
        described = ",".join(
            f'"{t.name}":{{"dtype":"{o.datatype}","shape":{list(o.shape)}}}'
            for t, o in zip(outputs, response.outputs, strict=True)
        )
        cid = packet.meta.correlation_id
        message = _JSON.format(cid, control.model, control.model_version, described)
        return pb.Ack(
            correlation_id=cid, status=pb.OK, message=message, outputs=outputs, final=True
        )

    async def _chat_stream(
        self, request_iterator: AsyncIterator[pb.DataPacket]
    ) -> AsyncIterator[pb.Ack]:
        call = self._stub.ModelStreamInfer()
        pending: dict[str, pb.DataPacket] = {}
        acks: asyncio.Queue[pb.Ack | None] = asyncio.Queue()

        async def read() -> None:
            n = 0
            async for packet in request_iterator:
                n += 1
                rid = str(n)
                pending[rid] = packet
                control = packet.control
                spec = control.inputs[0]
                await call.write(
                    service_pb2.ModelInferRequest(
                        model_name=control.model,
                        model_version=control.model_version,
                        id=rid,
                        inputs=[
                            service_pb2.ModelInferRequest.InferInputTensor(
                                name=spec.name, datatype="FP32", shape=packet.tensor.shape.dims
                            )
                        ],
                        outputs=[
                            service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=o.name)
                            for o in control.outputs
                        ],
                        raw_input_contents=[packet.tensor.data],
                    )
                )
            while pending:
                await asyncio.sleep(0.01)
            acks.put_nowait(None)

        async def responses() -> None:
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    return
                inf = r.infer_response
                if r.error_message:  # end the call with Triton's words, never hang
                    failed.append(RuntimeError(f"triton: {r.error_message} (id {inf.id!r})"))
                    acks.put_nowait(None)
                    return
                acks.put_nowait(self._ack(pending.pop(inf.id), inf))

        failed: list[BaseException] = []
        tasks = [asyncio.create_task(read()), asyncio.create_task(responses())]
        try:
            while (ack := await acks.get()) is not None:
                yield ack
            if failed:
                raise failed[0]
        finally:
            for t in tasks:
                t.cancel()
            call.cancel()

    async def _answer(self, packet: pb.DataPacket, acks: asyncio.Queue[pb.Ack | None]) -> None:
        control = packet.control
        spec = control.inputs[0]
        response = await self._stub.ModelInfer(
            service_pb2.ModelInferRequest(
                model_name=control.model,
                model_version=control.model_version,
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(
                        name=spec.name, datatype="FP32", shape=packet.tensor.shape.dims
                    )
                ],
                outputs=[
                    service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=o.name)
                    for o in control.outputs
                ],
                raw_input_contents=[packet.tensor.data],
            ),
            timeout=control.timeout_secs or 30.0,
        )
        acks.put_nowait(self._ack(packet, response))

    async def Chat(
        self, request_iterator: AsyncIterator[pb.DataPacket], context: Any
    ) -> AsyncIterator[pb.Ack]:
        if self.stream:
            async for ack in self._chat_stream(request_iterator):
                yield ack
            return
        acks: asyncio.Queue[pb.Ack | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def read() -> None:
            async for packet in request_iterator:
                task = asyncio.create_task(self._answer(packet, acks))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks))
            acks.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (ack := await acks.get()) is not None:
                yield ack
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()

    async def ServerReady(self, request: pb.ReadyRequest, context: Any) -> pb.ReadyResponse:
        return pb.ReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ReadyRequest, context: Any) -> pb.ReadyResponse:
        return pb.ReadyResponse(ready=True)


async def _main(listen: str, triton_url: str, stream: bool) -> None:
    channel = grpc.aio.insecure_channel(triton_url)
    server = grpc.aio.server()
    pbg.add_MultimodalServiceServicer_to_server(
        FloorProxy(service_pb2_grpc.GRPCInferenceServiceStub(channel), stream), server
    )
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"LISTENING {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--triton-url", required=True)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    asyncio.run(_main(args.listen, args.triton_url, args.stream))


if __name__ == "__main__":
    main()
