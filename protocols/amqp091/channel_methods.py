"""What each AMQP 0-9-1 channel method does in the core, by class: channel, exchange,
queue, basic, confirm and tx (spec 1.4-1.9).

`CHANNEL_HANDLERS` maps a pamqp method class to its handler; the connection
(`adapter.AMQPConnection._dispatch`) looks the handler up for every method on
an open channel and turns a `BrokerError` it raises into channel.close or
connection.close. A handler calls the channel's core `Session` and answers
through `AMQPChannel.reply`, which keeps replies in order and waits for the
store when the reply promises durability (see `channel`). basic.publish is
not here: content-bearing, it arrives through the connection's content path.

basic.get has the one wait that is not the store's: a queue whose ready
entries are all paged out is not empty, so a get waits for the read that
brings them back and later gets on the channel wait behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from pamqp import commands
from pamqp.base import Frame

from moorage.broker.errors import (
    BrokerError,
    ChannelError,
    CommandInvalid,
    NotImplementedFeature,
    PreconditionFailed,
)
from moorage.broker.keepalive import KeepAlive
from moorage.protocols.amqp091.channel import AMQPChannel, ChannelOwner
from moorage.protocols.amqp091.methods import unchecked

GET_READ_BACKS = 5  # reads of paged-out entries one basic.get waits for, at most


class MethodsOwner(ChannelOwner, Protocol):
    """What the channel methods need of the connection beyond `ChannelOwner`."""

    writable: bool
    keepalive: KeepAlive
    read_backs: set[asyncio.Task[None]]  # basic.gets waiting for the store; cancelled on close

    @property
    def running(self) -> bool: ...

    def close_channel(self, channel: AMQPChannel) -> None: ...


Handler = Callable[[MethodsOwner, AMQPChannel, Any], None]

# -- channel ------------------------------------------------------------------------------


def channel_open(conn: MethodsOwner, channel: AMQPChannel, m: Frame) -> None:
    raise ChannelError(f"second 'channel.open' seen on channel {channel.number}")


def channel_close(conn: MethodsOwner, channel: AMQPChannel, m: commands.Channel.Close) -> None:
    conn.close_channel(channel)
    conn.send_method(channel.number, commands.Channel.CloseOk())


def channel_close_ok(conn: MethodsOwner, channel: AMQPChannel, m: Frame) -> None:
    raise CommandInvalid("unexpected 'channel.close-ok'")  # RabbitMQ: 503


def channel_flow(conn: MethodsOwner, channel: AMQPChannel, m: commands.Channel.Flow) -> None:
    active = bool(m.active)
    channel.client_flow = active
    channel.session.set_flow(active and conn.writable)
    channel.reply(commands.Channel.FlowOk(active))


# -- exchange -----------------------------------------------------------------------------


def exchange_declare(
    conn: MethodsOwner, channel: AMQPChannel, m: commands.Exchange.Declare
) -> None:
    exchange = channel.session.declare_exchange(
        m.exchange,
        m.exchange_type,
        passive=m.passive,
        durable=m.durable,
        auto_delete=m.auto_delete,
        internal=m.internal,
        arguments=m.arguments or {},
    )
    if not m.nowait:
        channel.reply(commands.Exchange.DeclareOk(), durable=exchange.durable)


def exchange_delete(conn: MethodsOwner, channel: AMQPChannel, m: commands.Exchange.Delete) -> None:
    channel.session.delete_exchange(m.exchange, if_unused=m.if_unused)
    if not m.nowait:
        channel.reply(commands.Exchange.DeleteOk(), durable=True)


def exchange_bind(conn: MethodsOwner, channel: AMQPChannel, m: commands.Exchange.Bind) -> None:
    channel.session.bind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
    if not m.nowait:
        channel.reply(commands.Exchange.BindOk(), durable=True)


def exchange_unbind(conn: MethodsOwner, channel: AMQPChannel, m: commands.Exchange.Unbind) -> None:
    channel.session.unbind_exchange(m.destination, m.source, m.routing_key, m.arguments or {})
    if not m.nowait:
        channel.reply(commands.Exchange.UnbindOk(), durable=True)


# -- queue --------------------------------------------------------------------------------


def queue_declare(conn: MethodsOwner, channel: AMQPChannel, m: commands.Queue.Declare) -> None:
    queue, messages, consumers = channel.session.declare_queue(
        m.queue,
        passive=m.passive,
        durable=m.durable,
        exclusive=m.exclusive,
        auto_delete=m.auto_delete,
        arguments=m.arguments or {},
    )
    channel.last_queue = queue.name
    if not m.nowait:
        declare_ok = unchecked(
            commands.Queue.DeclareOk,
            queue=queue.name,
            message_count=messages,
            consumer_count=consumers,
        )
        channel.reply(declare_ok, durable=queue.stored)


def queue_bind(conn: MethodsOwner, channel: AMQPChannel, m: commands.Queue.Bind) -> None:
    queue = channel.queue_name(m.queue)
    routing_key = m.routing_key if m.queue or m.routing_key else queue
    channel.session.bind_queue(queue, m.exchange, routing_key, m.arguments or {})
    if not m.nowait:
        channel.reply(commands.Queue.BindOk(), durable=True)


def queue_unbind(conn: MethodsOwner, channel: AMQPChannel, m: commands.Queue.Unbind) -> None:
    queue = channel.queue_name(m.queue)
    routing_key = m.routing_key if m.queue or m.routing_key else queue
    channel.session.unbind_queue(queue, m.exchange, routing_key, m.arguments or {})
    channel.reply(commands.Queue.UnbindOk(), durable=True)


def queue_purge(conn: MethodsOwner, channel: AMQPChannel, m: commands.Queue.Purge) -> None:
    count = channel.session.purge_queue(channel.queue_name(m.queue))
    if not m.nowait:
        channel.reply(commands.Queue.PurgeOk(count), durable=True)


def queue_delete(conn: MethodsOwner, channel: AMQPChannel, m: commands.Queue.Delete) -> None:
    count = channel.session.delete_queue(
        channel.queue_name(m.queue), if_unused=m.if_unused, if_empty=m.if_empty
    )
    if not m.nowait:
        channel.reply(commands.Queue.DeleteOk(count), durable=True)


# -- basic (basic.publish is the connection's content path) ---------------------------------


def basic_qos(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Qos) -> None:
    if m.prefetch_size:
        raise NotImplementedFeature(f"prefetch_size!=0 ({m.prefetch_size})")
    channel.session.qos(m.prefetch_count, global_=m.global_)
    channel.reply(commands.Basic.QosOk())


def basic_consume(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Consume) -> None:
    consumer = channel.session.consume(
        channel.queue_name(m.queue),
        m.consumer_tag,
        no_ack=m.no_ack,
        exclusive=m.exclusive,
        arguments=m.arguments or {},
    )
    if m.nowait:
        consumer.start()
    else:
        channel.reply(commands.Basic.ConsumeOk(consumer.tag), after=consumer.start)


def basic_cancel(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Cancel) -> None:
    tag = m.consumer_tag or ""
    channel.session.cancel(tag)
    channel.tags.pop(tag, None)
    if not m.nowait:
        channel.reply(commands.Basic.CancelOk(m.consumer_tag))


def basic_get(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Get) -> None:
    channel.gets.append((m, channel.queue_name(m.queue)))
    if len(channel.gets) == 1:  # else it is answered after the one waiting
        _answer_gets(conn, channel, GET_READ_BACKS)


def _answer_gets(conn: MethodsOwner, channel: AMQPChannel, read_backs: int) -> None:
    """Answer the channel's basic.gets in order, waiting while entries are paged back in.

    A queue whose ready entries are all paged out is not empty: rather
    than get-empty, the get waits for the read that brings them back
    (`read_backs` times at most, in case reads keep failing) and tries
    again. Later gets on the channel wait behind it.
    """
    gets = channel.gets
    while gets:
        m, name = gets[0]
        try:
            reading = _answer_get(conn, channel, m, name, read_backs > 0)
        except BrokerError as e:
            gets.clear()
            conn.channel_error(channel, e, m)
            return
        if reading is not None:
            task = asyncio.get_running_loop().create_task(
                _after_read_back(conn, channel, reading, read_backs - 1)
            )
            conn.read_backs.add(task)
            task.add_done_callback(conn.read_backs.discard)
            return
        gets.popleft()
        read_backs = GET_READ_BACKS


async def _after_read_back(
    conn: MethodsOwner, channel: AMQPChannel, reading: asyncio.Task[None], read_backs: int
) -> None:
    with contextlib.suppress(Exception):  # a failed read was logged by the queue
        await asyncio.shield(reading)
    if conn.running and channel.open:
        _answer_gets(conn, channel, read_backs)


def _answer_get(
    conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Get, name: str, may_wait: bool
) -> asyncio.Task[None] | None:
    """get-ok or get-empty; or, sending nothing, the read to wait for first."""
    got = channel.session.get(name, no_ack=m.no_ack)
    if got is None:
        reading = channel.session.read_back(name) if may_wait else None
        if reading is not None:
            return reading
        channel.reply(commands.Basic.GetEmpty())
        return None
    tag, redelivered, message, remaining = got
    method = unchecked(
        commands.Basic.GetOk,
        delivery_tag=tag,
        redelivered=redelivered,
        exchange=message.exchange,
        routing_key=message.routing_key,
        message_count=remaining,
    )
    conn.keepalive.sent()
    conn.send_content(channel.number, method, message)
    return None


def basic_ack(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Ack) -> None:
    channel.session.ack(m.delivery_tag, multiple=m.multiple)


def basic_nack(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Nack) -> None:
    channel.session.nack(m.delivery_tag, multiple=m.multiple, requeue=m.requeue)


def basic_reject(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Reject) -> None:
    channel.session.nack(int(m.delivery_tag or 0), multiple=False, requeue=m.requeue)


def basic_recover(conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.Recover) -> None:
    if not m.requeue:
        raise NotImplementedFeature("requeue=false")
    # RabbitMQ sends recover-ok before the requeued messages are delivered again
    channel.reply(commands.Basic.RecoverOk(), after=channel.session.recover)


def basic_recover_async(
    conn: MethodsOwner, channel: AMQPChannel, m: commands.Basic.RecoverAsync
) -> None:
    if not m.requeue:
        raise NotImplementedFeature("requeue=false")
    channel.session.recover()


# -- confirm and tx -----------------------------------------------------------------------


def confirm_select(conn: MethodsOwner, channel: AMQPChannel, m: commands.Confirm.Select) -> None:
    if channel.session.transactional:
        raise PreconditionFailed("cannot switch from tx to confirm mode")
    channel.confirm = True
    if not m.nowait:
        channel.reply(commands.Confirm.SelectOk())


def tx_select(conn: MethodsOwner, channel: AMQPChannel, m: commands.Tx.Select) -> None:
    if channel.confirm:
        raise PreconditionFailed("cannot switch from confirm to tx mode")
    channel.session.tx_select()
    channel.reply(commands.Tx.SelectOk())


def tx_commit(conn: MethodsOwner, channel: AMQPChannel, m: commands.Tx.Commit) -> None:
    channel.session.tx_commit()
    channel.reply(commands.Tx.CommitOk(), durable=True)


def tx_rollback(conn: MethodsOwner, channel: AMQPChannel, m: commands.Tx.Rollback) -> None:
    channel.session.tx_rollback()
    channel.reply(commands.Tx.RollbackOk())


CHANNEL_HANDLERS: dict[type[Frame], Handler] = {
    commands.Channel.Open: channel_open,
    commands.Channel.Close: channel_close,
    commands.Channel.CloseOk: channel_close_ok,
    commands.Channel.Flow: channel_flow,
    commands.Exchange.Declare: exchange_declare,
    commands.Exchange.Delete: exchange_delete,
    commands.Exchange.Bind: exchange_bind,
    commands.Exchange.Unbind: exchange_unbind,
    commands.Queue.Declare: queue_declare,
    commands.Queue.Bind: queue_bind,
    commands.Queue.Unbind: queue_unbind,
    commands.Queue.Purge: queue_purge,
    commands.Queue.Delete: queue_delete,
    commands.Basic.Qos: basic_qos,
    commands.Basic.Consume: basic_consume,
    commands.Basic.Cancel: basic_cancel,
    commands.Basic.Get: basic_get,
    commands.Basic.Ack: basic_ack,
    commands.Basic.Nack: basic_nack,
    commands.Basic.Reject: basic_reject,
    commands.Basic.Recover: basic_recover,
    commands.Basic.RecoverAsync: basic_recover_async,
    commands.Confirm.Select: confirm_select,
    commands.Tx.Select: tx_select,
    commands.Tx.Commit: tx_commit,
    commands.Tx.Rollback: tx_rollback,
}
