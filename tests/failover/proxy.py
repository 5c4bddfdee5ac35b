"""A fault-injecting TCP proxy for partition tests.

`FaultyProxy(target_port)` listens on its own free loopback port and forwards
every connection to the target, on a background thread with its own event
loop. Faults apply per direction and to connections already open:
`up` (client to target) and `down` (target to client) are each ``"pass"`` or
``"drop"`` (bytes silently discarded: a black hole, the TCP connection stays
up), and `delay` holds every chunk that many seconds (in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.failover.cluster import free_port


class FaultyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = "pass"
        self.down = "pass"
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultyProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self._loop
        )
        self._server = future.result(10)
        return self

    def cut(self) -> None:
        """Both directions black-holed."""
        self.up = self.down = "drop"

    def heal(self) -> None:
        self.up = self.down = "pass"
        self.delay = 0.0

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, target_writer))
        await asyncio.gather(
            self._pump(reader, target_writer, "up"),
            self._pump(target_reader, writer, "down"),
            return_exceptions=True,
        )
        for end in (writer, target_writer):
            end.close()
            self._writers.discard(end)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                if getattr(self, direction) == "drop":
                    continue
                sink.write(data)
                await sink.drain()
        finally:
            # A black hole does not pass the end of the connection either: the
            # other side must notice the silence by itself.
            if getattr(self, direction) == "pass":
                sink.close()
