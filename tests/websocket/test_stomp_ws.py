"""STOMP over WebSocket: stomp.py's WSStompConnection, a raw aiohttp client, refusals, limits."""

from __future__ import annotations

import contextlib
import threading

import aiohttp
import paho.mqtt.client as paho
import pytest
import stomp
from stomp.adapter.ws import WSStompConnection

from tests.websocket.conftest import TIMEOUT


class Listener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: list[stomp.utils.Frame] = []
        self.receipts: list[str] = []

    def on_message(self, frame: stomp.utils.Frame) -> None:
        with self.cond:
            self.messages.append(frame)
            self.cond.notify_all()

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        with self.cond:
            self.receipts.append(frame.headers["receipt-id"])
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


@pytest.fixture
def stomp_ws_client(ws_broker):
    opened = []

    def make() -> tuple[WSStompConnection, Listener]:
        conn = WSStompConnection([("127.0.0.1", ws_broker.stomp_port)], ws_path="/ws")
        listener = Listener()
        conn.set_listener("test", listener)
        conn.connect("guest", "guest", wait=True)
        opened.append(conn)
        return conn, listener

    yield make
    for conn in opened:
        if conn.is_connected():
            with contextlib.suppress(Exception):
                conn.disconnect()


def test_stomp_py_websocket_send_and_subscribe(stomp_ws_client):
    consumer, inbox = stomp_ws_client()
    consumer.subscribe("/queue/ws-stomp", id="s1", ack="auto", receipt="sub")
    assert inbox.wait(lambda: "sub" in inbox.receipts)
    producer, _ = stomp_ws_client()
    for i in range(3):
        producer.send("/queue/ws-stomp", f"hello {i}", headers={"x-n": str(i)})
    assert inbox.wait(lambda: len(inbox.messages) == 3)
    assert [m.body for m in inbox.messages] == ["hello 0", "hello 1", "hello 2"]
    assert inbox.messages[0].headers["x-n"] == "0"
    producer.disconnect()
    consumer.disconnect()


def test_mqtt_over_websocket_to_stomp_over_websocket(stomp_ws_client, paho_ws):
    consumer, inbox = stomp_ws_client()
    consumer.subscribe("/topic/alerts.fire", id="t1", receipt="sub")
    assert inbox.wait(lambda: "sub" in inbox.receipts)
    pub = paho_ws("ws-to-stomp", paho.MQTTv5)
    pub.connect()
    pub.publish("alerts/fire", b"smoke", qos=1)
    assert inbox.wait(lambda: len(inbox.messages) == 1)
    assert inbox.messages[0].body == "smoke"


CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00"


async def _open(session: aiohttp.ClientSession, port: int, protocols: list[str]):
    return await session.ws_connect(f"http://127.0.0.1:{port}/ws", protocols=protocols)


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> tuple[aiohttp.WSMsgType, bytes]:
    msg = await ws.receive(timeout=TIMEOUT)
    if msg.type is aiohttp.WSMsgType.TEXT:
        return msg.type, msg.data.encode()
    return msg.type, msg.data


async def test_raw_v12_stomp_client(ws_broker):
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, ws_broker.stomp_port, ["v10.stomp", "v11.stomp", "v12.stomp"])
        try:
            assert ws.protocol == "v12.stomp"  # the highest offered
            await ws.send_str(CONNECT.decode())
            kind, connected = await _frame(ws)
            assert kind is aiohttp.WSMsgType.TEXT
            assert connected.startswith(b"CONNECTED\n")
            assert b"version:1.2" in connected
            await ws.send_str(
                "SUBSCRIBE\nid:0\ndestination:/queue/raw-ws\nreceipt:r1\n\n\x00"
                # a second frame in the same message, split in two by the client
                "SEND\ndestination:/queue/raw-ws\ncontent-type:text/plain\n\nhi"
            )
            await ws.send_bytes(b" there\x00")
            await ws.send_bytes(b"SEND\ndestination:/queue/raw-ws\n\n\xff\xfe\x00")
            kind, receipt = await _frame(ws)
            assert receipt.startswith(b"RECEIPT\nreceipt-id:r1\n")
            kind, first = await _frame(ws)
            assert kind is aiohttp.WSMsgType.TEXT
            assert first.startswith(b"MESSAGE\n")
            assert first.endswith(b"\n\nhi there\x00")
            kind, second = await _frame(ws)
            assert kind is aiohttp.WSMsgType.BINARY  # not UTF-8: sent as a binary message
            assert second.endswith(b"\n\n\xff\xfe\x00")
            await ws.send_str("DISCONNECT\nreceipt:bye\n\n\x00")
            kind, bye = await _frame(ws)
            assert bye.startswith(b"RECEIPT\nreceipt-id:bye\n")
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == aiohttp.WSCloseCode.OK
        finally:
            await ws.close()


async def test_no_subprotocol_is_accepted(ws_broker):
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, ws_broker.stomp_port, [])
        try:
            assert ws.protocol is None
            await ws.send_bytes(CONNECT)
            _, connected = await _frame(ws)
            assert connected.startswith(b"CONNECTED\n")
        finally:
            await ws.close()


@pytest.mark.parametrize("protocols", [["mqtt"], ["v13.stomp", "stomp"]])
async def test_unknown_subprotocol_is_refused(ws_broker, protocols):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await _open(session, ws_broker.stomp_port, protocols)
    assert refused.value.status == 400


@pytest.mark.parametrize("ws_broker", [{"max_message_size": 1024}], indirect=True)
async def test_message_over_the_limit_closes_with_1009(ws_broker):
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, ws_broker.stomp_port, ["v12.stomp"])
        try:
            await ws.send_str(CONNECT.decode())
            await _frame(ws)
            body = "x" * (1024 + 64 * 1024 + 1024 + 1)
            await ws.send_str(f"SEND\ndestination:/queue/big\n\n{body}\x00")
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        finally:
            await ws.close()
    assert ws_broker.wait_connections("stomp_ws", 0)


@pytest.mark.parametrize("ws_broker", [{"max_message_size": 1024}], indirect=True)
async def test_body_over_the_broker_limit_gets_an_error_frame(ws_broker):
    """Within the WebSocket limit but over the STOMP body limit: ERROR, then close 1000."""
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, ws_broker.stomp_port, ["v12.stomp"])
        try:
            await ws.send_str(CONNECT.decode())
            await _frame(ws)
            await ws.send_str(f"SEND\ndestination:/queue/big\n\n{'x' * 2048}\x00")
            _, error = await _frame(ws)
            assert error.startswith(b"ERROR\n")
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == aiohttp.WSCloseCode.OK
        finally:
            await ws.close()


async def test_shutdown_sends_error_then_going_away(ws_broker):
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, ws_broker.stomp_port, ["v12.stomp"])
        try:
            await ws.send_str(CONNECT.decode())
            await _frame(ws)
            ws_broker.call(lambda: ws_broker.listeners["stomp_ws"].shutdown_connections("test"))
            _, error = await _frame(ws)
            assert error.startswith(b"ERROR\n")
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        finally:
            await ws.close()


@pytest.mark.parametrize("ws_broker", [{"memory_high_watermark": 0}], indirect=True)
async def test_memory_alarm_holds_a_publishing_websocket_until_it_clears(ws_broker):
    """As on TCP: a client that published is not read while the alarm is set; one
    that only consumes is, and the held one carries on once the alarm clears."""
    flow = ws_broker.broker.flow
    protocols = ["v12.stomp"]
    async with aiohttp.ClientSession() as session:
        publisher = await _open(session, ws_broker.stomp_port, protocols)
        consumer = await _open(session, ws_broker.stomp_port, protocols)
        try:
            for ws in (publisher, consumer):
                await ws.send_str(CONNECT.decode())
                assert (await _frame(ws))[1].startswith(b"CONNECTED\n")
            send = "SEND\ndestination:/queue/ws-alarm\nreceipt:{}\n\nm\x00"
            await publisher.send_str(send.format("r0"))
            assert b"receipt-id:r0" in (await _frame(publisher))[1]
            ws_broker.call(flow.set_memory_alarm, True)
            await publisher.send_str(send.format("r1"))  # read, then the shell holds
            assert b"receipt-id:r1" in (await _frame(publisher))[1]
            await publisher.send_str(send.format("r2"))
            with pytest.raises(TimeoutError):
                await publisher.receive(timeout=0.5)
            await consumer.send_str(
                "SUBSCRIBE\nid:0\ndestination:/queue/ws-alarm\nreceipt:s\n\n\x00"
            )
            got = [(await _frame(consumer))[1] for _ in range(3)]  # not held
            assert sum(f.startswith(b"MESSAGE\n") for f in got) == 2  # r0's and r1's
            assert any(b"receipt-id:s" in f for f in got)
            ws_broker.call(flow.set_memory_alarm, False)
            assert b"receipt-id:r2" in (await _frame(publisher))[1]
            assert (await _frame(consumer))[1].startswith(b"MESSAGE\n")  # r2's
        finally:
            await publisher.close()
            await consumer.close()
