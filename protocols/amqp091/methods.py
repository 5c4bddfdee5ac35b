"""Method and content-header payloads (spec 4.2.4, 4.2.6.1): pamqp, with hand-written fast paths.

pamqp is the reference for every method and for basic properties. The
methods a busy client sends most (basic.publish, basic.ack) and those every
connection sends once (start-ok, tune-ok, connection.open, channel.open,
connection.close) are decoded by hand; each fast decoder returns None for
anything it does not recognise as well-formed, and pamqp then decides,
errors included. tests/amqp091/test_wire.py checks that a fast decoder that
accepts a payload gives exactly what pamqp gives.

Content headers are decoded once per distinct property set (a bounded cache
shared by every connection), which also keeps their canonical re-encoding
for forwarding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeVar

from pamqp import base, commands, common, decode, encode, exceptions, header

from moorage.protocols.amqp091.events import FrameError, ReplyCode
from moorage.protocols.amqp091.properties import marshal_properties

METHOD_INDEX: Final = struct.Struct(">I")  # class-id:short method-id:short

# What pamqp lets escape when handed malformed method or header payloads:
# struct.error/ValueError (incl. UnicodeDecodeError) from the decoders,
# OverflowError/OSError from datetime.fromtimestamp on absurd timestamps, and
# RecursionError from deeply nested field tables or arrays.
DECODE_ERRORS: Final = (
    exceptions.UnmarshalingException,
    struct.error,
    ValueError,
    TypeError,
    OverflowError,
    OSError,
    RecursionError,
)


_BODY_SIZE: Final = struct.Struct(">Q")
_PROPERTIES_CACHE_SIZE: Final = 1024
_properties_cache: dict[bytes, tuple[commands.Basic.Properties, bytes | None]] = {}


def decode_content_header(
    payload: bytes,
) -> tuple[commands.Basic.Properties, bytes | None, int]:
    """A content header's properties, their canonical encoding, and the body size.

    Most publishers send the same few property sets over and over, so decoded
    properties are cached by their bytes (a bounded cache shared by every
    connection): a hit skips pamqp's decoding here and its re-encoding for
    each delivery. The cached `Properties` object is shared: treat it as
    read-only. Raises what pamqp raises for a malformed header.
    """
    raw = payload[12:]
    cached = _properties_cache.get(raw) if len(raw) >= 2 else None
    if cached is None:
        content_header = header.ContentHeader()
        content_header.unmarshal(payload)
        properties = content_header.properties
        try:
            canonical: bytes | None = marshal_properties(properties)
        except (ValueError, TypeError):
            canonical = None  # e.g. a cluster_id pamqp will not send again
        if len(_properties_cache) >= _PROPERTIES_CACHE_SIZE:
            _properties_cache.clear()
        _properties_cache[raw] = cached = (properties, canonical)
        return properties, canonical, content_header.body_size
    return cached[0], cached[1], _BODY_SIZE.unpack_from(payload, 4)[0]


PUBLISH_INDEX: Final = commands.Basic.Publish.index
_ACK_INDEX: Final = commands.Basic.Ack.index
_ACK_ARGS: Final = struct.Struct(">qB")  # signed, as pamqp decodes a longlong
_TICKET: Final = struct.Struct(">H")


def fast_publish(payload: bytes) -> base.Frame | None:
    """basic.publish decoded by hand; None when the general path must decide.

    Gives exactly what pamqp's generic unmarshal gives for a well-formed
    frame (checked by tests/amqp091/test_wire.py); anything unusual (short,
    trailing bytes, bad UTF-8) goes to the general path and its errors.
    """
    try:
        ex_end = 7 + payload[6]
        rk_end = ex_end + 1 + payload[ex_end]
        bits = payload[rk_end]
        if len(payload) != rk_end + 1:
            return None
        exchange = payload[7:ex_end].decode()
        routing_key = payload[ex_end + 1 : rk_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Basic.Publish.__new__(commands.Basic.Publish)
    method.ticket = _TICKET.unpack_from(payload, 4)[0]
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


def _fast_ack(payload: bytes) -> base.Frame | None:
    """basic.ack decoded by hand; None when the general path must decide."""
    if len(payload) != 13:
        return None
    method = commands.Basic.Ack.__new__(commands.Basic.Ack)
    method.delivery_tag, bits = _ACK_ARGS.unpack_from(payload, 4)
    method.multiple = bool(bits & 1)
    return method


# -- the handshake: what every client sends once per connection (spec 2.2.4) --------------

_LONG: Final = struct.Struct(">I")
_TUNE_OK_ARGS: Final = struct.Struct(">HIH")  # channel_max, frame_max, heartbeat
_CLOSE_HEAD: Final = struct.Struct(">H")  # reply_code, before reply_text
_CLOSE_TAIL: Final = struct.Struct(">HH")  # class_id, method_id, after reply_text
_TABLE_CACHE_SIZE: Final = 256
# Decoded client-properties tables by their bytes: every client of one library
# and version sends the same table. Shared objects: treat them as read-only.
_tables: dict[bytes, common.FieldTable] = {}


def _shortstr_end(payload: bytes, at: int) -> int:
    """Where the shortstr at `at` ends; IndexError when its length octet is missing."""
    return at + 1 + payload[at]


def _fast_start_ok(payload: bytes) -> base.Frame | None:
    """connection.start-ok decoded by hand (client properties cached by their bytes).

    None when the general path must decide: anything short, trailing or not
    UTF-8 where pamqp wants text, and any table pamqp cannot decode.
    """
    try:
        table_end = 8 + _LONG.unpack_from(payload, 4)[0]
        mechanism_end = _shortstr_end(payload, table_end)
        response_end = mechanism_end + 4 + _LONG.unpack_from(payload, mechanism_end)[0]
        locale_end = _shortstr_end(payload, response_end)
        if locale_end != len(payload):
            return None
        mechanism = payload[table_end + 1 : mechanism_end].decode()
        locale = payload[response_end + 1 : locale_end].decode()
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    raw_table = payload[4:table_end]
    table = _tables.get(raw_table)
    if table is None:
        # pamqp decodes the table from the rest of the payload. Only a table whose
        # own bytes decode to the same is cached: nothing in it reads past its end,
        # so its value cannot depend on what follows it.
        try:
            table = decode.field_table(raw_table)[1]
            if decode.field_table(payload[4:])[1] != table:
                return None
        except DECODE_ERRORS:
            return None
        if len(_tables) >= _TABLE_CACHE_SIZE:
            _tables.clear()
        _tables[raw_table] = table
    raw_response = payload[mechanism_end + 4 : response_end]
    try:  # pamqp's longstr: text when it is UTF-8, else the bytes
        response: str | bytes = raw_response.decode()
    except UnicodeDecodeError:
        response = raw_response
    method = commands.Connection.StartOk.__new__(commands.Connection.StartOk)
    method.client_properties = table
    method.mechanism = mechanism
    method.response = response  # type: ignore[assignment]  # pamqp gives bytes too
    method.locale = locale
    return method


def _fast_tune_ok(payload: bytes) -> base.Frame | None:
    """connection.tune-ok decoded by hand; None unless exactly its 12 octets."""
    if len(payload) != 12:
        return None
    method = commands.Connection.TuneOk.__new__(commands.Connection.TuneOk)
    method.channel_max, method.frame_max, method.heartbeat = _TUNE_OK_ARGS.unpack_from(payload, 4)
    return method


def _fast_open(payload: bytes) -> base.Frame | None:
    """connection.open decoded by hand; None when the general path must decide."""
    try:
        vhost_end = _shortstr_end(payload, 4)
        capabilities_end = _shortstr_end(payload, vhost_end)
        if capabilities_end + 1 != len(payload):
            return None
        virtual_host = payload[5:vhost_end].decode()
        capabilities = payload[vhost_end + 1 : capabilities_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Connection.Open.__new__(commands.Connection.Open)
    method.virtual_host = virtual_host
    method.capabilities = capabilities
    method.insist = bool(payload[capabilities_end] & 1)
    return method


def _fast_channel_open(payload: bytes) -> base.Frame | None:
    """channel.open decoded by hand; None when the general path must decide."""
    try:
        end = _shortstr_end(payload, 4)
        if end != len(payload):
            return None
        out_of_band = payload[5:end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Channel.Open.__new__(commands.Channel.Open)
    method.out_of_band = out_of_band
    return method


def _fast_close(payload: bytes) -> base.Frame | None:
    """connection.close decoded by hand; None when the general path must decide."""
    try:
        text_end = _shortstr_end(payload, 6)
        if text_end + 4 != len(payload):
            return None
        reply_text = payload[7:text_end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
    method = commands.Connection.Close.__new__(commands.Connection.Close)
    method.reply_code = _CLOSE_HEAD.unpack_from(payload, 4)[0]
    method.reply_text = reply_text
    method.class_id, method.method_id = _CLOSE_TAIL.unpack_from(payload, text_end)
    return method


FAST_METHODS: Final[dict[int, Callable[[bytes], base.Frame | None]]] = {
    PUBLISH_INDEX: fast_publish,
    _ACK_INDEX: _fast_ack,
    commands.Connection.StartOk.index: _fast_start_ok,
    commands.Connection.TuneOk.index: _fast_tune_ok,
    commands.Connection.Open.index: _fast_open,
    commands.Channel.Open.index: _fast_channel_open,
    commands.Connection.Close.index: _fast_close,
}


def decode_method(payload: bytes) -> base.Frame:
    """Decode a method frame payload (spec 4.2.4): class-id, method-id, arguments.

    The two methods a busy client sends most, basic.publish and basic.ack, and
    the handshake's (start-ok, tune-ok, connection.open, channel.open,
    connection.close: every connection sends them once) take a hand-written
    path; every other method, and any frame a fast path does not recognise as
    well-formed, goes through pamqp.

    Raises:
        FrameError: 502 when the payload is malformed, 503 for an unknown method.
    """
    if len(payload) < METHOD_INDEX.size:
        raise FrameError(
            ReplyCode.SYNTAX_ERROR, f"SYNTAX_ERROR - method frame of {len(payload)} octets"
        )
    (index,) = METHOD_INDEX.unpack_from(payload)
    fast_decode = FAST_METHODS.get(index)
    if fast_decode is not None:
        fast = fast_decode(payload)
        if fast is not None:
            return fast
    class_id, method_id = index >> 16, index & 0xFFFF
    method_class: type[base.Frame] | None = commands.INDEX_MAPPING.get(index)
    if method_class is None:
        raise FrameError(
            ReplyCode.COMMAND_INVALID,
            f"COMMAND_INVALID - unknown method {class_id}.{method_id}",
            class_id,
            method_id,
        )
    # Skip __init__: unmarshal assigns every slot, and some constructors (e.g.
    # basic.recover-async) emit a DeprecationWarning the peer should not trigger.
    method: base.Frame = method_class.__new__(method_class)
    try:
        method.unmarshal(payload[METHOD_INDEX.size :])
    except DECODE_ERRORS as err:
        raise FrameError(
            ReplyCode.SYNTAX_ERROR,
            f"SYNTAX_ERROR - cannot decode {method.name}: {err}",
            class_id,
            method_id,
        ) from err
    return method


_Method = TypeVar("_Method", bound=base.Frame)


def unchecked(method_class: type[_Method], **values: object) -> _Method:
    """A method to send, built without pamqp's `validate()`; every argument named.

    pamqp's constructors check queue and exchange names against
    `^[a-zA-Z0-9-_.:@#,/+ ]*$`, stricter than AMQP (any shortstr) and RabbitMQ
    (any UTF-8 up to 255 bytes), which Moorage follows: a queue named
    `"file ✓"` is declared, so its `queue.declare-ok`, and the `basic.return`
    and `basic.get-ok` of a message through such an exchange, must be sendable
    (found by tests/fuzz: the constructor's ValueError killed the connection's
    reader). Encoding (`marshal_arguments`) still enforces the field sizes.
    Raises KeyError for an argument left out, TypeError for an unknown one.
    """
    unknown = values.keys() - set(method_class.__slots__)
    if unknown:
        raise TypeError(f"{method_class.__name__} has no argument {sorted(unknown)}")
    method = method_class.__new__(method_class)
    for argument in method_class.__slots__:
        setattr(method, argument, values[argument])
    return method


def marshal_arguments(method: base.Frame) -> bytes:
    """pamqp's `Frame.marshal` without its `validate()` call (same encoding rules)."""
    output: list[bytes] = []
    bits, offset, in_bits = 0, 0, False
    for argument in method.__slots__:
        data_type = method.amqp_type(argument)
        value = getattr(method, argument, 0)
        if data_type == "bit":
            if not in_bits:
                bits, offset, in_bits = 0, 0, True
            bits = encode.bit(value, bits, offset)
            offset += 1
            if offset == 8:
                output.append(encode.octet(bits))
                in_bits = False
            continue
        if in_bits:
            output.append(encode.octet(bits))
            in_bits = False
        output.append(encode.by_type(value, data_type))
    if in_bits:
        output.append(encode.octet(bits))
    return b"".join(output)
