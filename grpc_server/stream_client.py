"""A gateway-side client of ``RouteStream``: many concurrent Route/Complete calls share
one long-lived stream, and the calls queued while a batch is being sent go out
together in the next message, so the per-message cost of gRPC is shared.

    async with RouteStreamClient(pb_grpc.RouterStub(channel)) as client:
        routed = await client.route(pb.RouteRequest(text=prompt))
        await client.complete(pb.CompleteRequest(request_id=routed.request_id, outcome=1))
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import grpc

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc

STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class StreamCallError(Exception):
    """The service refused one call of the stream (the stream goes on)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class RouteStreamClient:
    """``max_batch`` caps the calls per message: keep a batch of your largest prompts
    under the server's ``server.max_message_bytes``, or the stream ends with
    RESOURCE_EXHAUSTED."""

    def __init__(
        self, stub: pb_grpc.RouterStub, metadata: Any = None, max_batch: int = 256
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._call: Any = stub.RouteStream(metadata=metadata)
        self._pending: dict[int, asyncio.Future[pb.StreamResult]] = {}
        self._queued: list[pb.StreamCall] = []
        self._has_queued = asyncio.Event()
        self._next_tag = 0
        self._closing = False
        self._writer = asyncio.create_task(self._write_batches())
        self._reader = asyncio.create_task(self._read_results())

    async def route(self, request: pb.RouteRequest) -> pb.RouteResponse:
        """Raises StreamCallError when refused (code as the unary Route would end)."""
        result = await self._submit(pb.StreamCall(route=request))
        return result.route

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteResponse:
        result = await self._submit(pb.StreamCall(complete=request))
        return result.complete

    async def _submit(self, call: pb.StreamCall) -> pb.StreamResult:
        if self._closing or self._reader.done():
            raise ConnectionError("the RouteStream is closed")
        call.tag = tag = self._next_tag
        self._next_tag += 1
        future: asyncio.Future[pb.StreamResult] = asyncio.get_running_loop().create_future()
        self._pending[tag] = future
        self._queued.append(call)
        self._has_queued.set()
        result = await future
        if result.HasField("error"):
            code = STATUS_BY_NUMBER.get(result.error.code, grpc.StatusCode.UNKNOWN)
            raise StreamCallError(code, result.error.message)
        return result

    async def _write_batches(self) -> None:
        # Never cancelled mid-write: cancelling a write cancels the whole call.
        while True:
            await self._has_queued.wait()
            self._has_queued.clear()
            if self._queued:
                batch = self._queued[: self.max_batch]
                del self._queued[: self.max_batch]
                if self._queued:
                    self._has_queued.set()
                await self._call.write(pb.RouteStreamRequest(calls=batch))
            elif self._closing:
                await self._call.done_writing()
                return

    async def _read_results(self) -> None:
        error: BaseException = ConnectionError("the RouteStream ended")
        try:
            async for reply in self._call:
                for result in reply.results:
                    future = self._pending.pop(result.tag, None)
                    if future is not None and not future.done():
                        future.set_result(result)
        except grpc.aio.AioRpcError as rpc_error:
            error = rpc_error
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def close(self) -> None:
        """Sends what is queued, ends the stream and waits for the last results."""
        self._closing = True
        self._has_queued.set()
        # A broken stream already failed the pending calls (reader side).
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._writer
        await self._reader

    async def __aenter__(self) -> RouteStreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
