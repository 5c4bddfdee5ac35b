"""How a client logs in: the store's users, certificates, backends, the brute-force guard.

Part of `broker.broker.Broker` (a mixin: the broker's own state). Adapters
log a client in with `begin_login`, which answers through a `done`
callback, at once or later:

- at once (before it returns) for a client without credentials (the
  anonymous rule), one that logs in with its verified client certificate,
  and, with the internal store alone (the default), for a password the
  credential cache remembers and for a refusal that needs no hash (an
  unknown user, a user without a password);
- later, from a task, when a password must be checked (its hash is checked
  on a worker thread, `broker.auth_verify`, so that the event loop keeps
  serving every other client meanwhile) or when a chain of backends is
  configured (`broker.auth_backends`). The adapter handles no more of that
  client's frames until `done` is called.

The management API awaits `login`, which answers the same way. Every
refusal with a `peer` counts towards that address's brute-force delay
(`login_guard`, `broker.auth_guard`) and every success resets it, whichever
way the answer came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from moorage.broker.auth import User, UserDirectory
from moorage.broker.auth_backends import AuthBackend, login_chain
from moorage.broker.auth_certs import identity_of
from moorage.broker.auth_guard import LoginGuard
from moorage.broker.clock import Clock
from moorage.broker.errors import AccessRefused, NotServing


class BrokerLogins:
    """Logging clients in (see the module's docstring)."""

    # the broker's state this part reads and writes (set by `Broker.__init__`)
    users: UserDirectory
    clock: Clock
    login_guard: LoginGuard
    cert_login_from: str
    auth_chain: list[AuthBackend] | None
    refusal: tuple[str, dict[str, str]] | None
    _logins: set[asyncio.Task[User]]

    def authenticate(
        self, username: str | None, password: str, *, from_loopback: bool, peer: str = ""
    ) -> User:
        """The user these credentials log in as. Raises AccessRefused.

        `username=None` means the client sent no credentials at all (an MQTT
        CONNECT without a user name, a STOMP CONNECT without `login`, AMQP's
        ANONYMOUS mechanism or an empty PLAIN response): every protocol gets the
        one anonymous rule, `auth.anonymous_user`, which refuses by default.

        With the client's `peer` ("host:port"), a refusal counts towards that
        address's brute-force delay (`login_guard`, `refusal_delay`) and a
        success resets it.

        Raises NotServing (before looking at the credentials) on a node that
        serves no client, see `refusal`.

        A password the credential cache does not know is checked on the calling
        thread: on the event loop, use `begin_login` or `login`, which check it
        on a worker thread.
        """
        self.check_serving()
        try:
            if username is None:
                user = self.users.authenticate_anonymous(from_loopback=from_loopback)
            else:
                user = self.users.authenticate(username, password, from_loopback=from_loopback)
        except AccessRefused as e:
            if peer:
                self.login_guard.failed(peer, username or "", e.text)
            raise
        if peer:
            self.login_guard.succeeded(peer)
        return user

    def authenticate_certificate(
        self, certificate: dict[str, Any] | None, *, from_loopback: bool, peer: str = ""
    ) -> User:
        """The user a verified client certificate names (`broker.auth_certs`): AMQP's
        EXTERNAL mechanism, MQTT and STOMP without a password. Raises AccessRefused."""
        identity = identity_of(certificate, self.cert_login_from)
        try:
            user = self.users.authenticate_identity(identity, from_loopback=from_loopback)
        except AccessRefused as e:
            if peer:
                self.login_guard.failed(peer, identity or "", e.text)
            raise
        if peer:
            self.login_guard.succeeded(peer)
        return user

    async def login(
        self, username: str | None, password: str, *, from_loopback: bool, peer: str = ""
    ) -> User:
        """As `authenticate`, with a password that the credential cache does not know
        checked on a worker thread (`broker.auth_verify`), not on the event loop.

        Raises NotServing (before looking at the credentials) or AccessRefused.
        """
        self.check_serving()
        if username is None:
            return self.authenticate(None, password, from_loopback=from_loopback, peer=peer)
        return await self._login_store(username, password, from_loopback=from_loopback, peer=peer)

    async def _login_store(
        self, username: str, password: str, *, from_loopback: bool, peer: str
    ) -> User:
        try:
            user = await self.users.authenticate_async(
                username, password, from_loopback=from_loopback
            )
        except AccessRefused as e:
            if peer:
                self.login_guard.failed(peer, username, e.text)
            raise
        if peer:
            self.login_guard.succeeded(peer)
        return user

    @property
    def pending_logins(self) -> int:
        """Logins waiting for their answer (a backend, or a password check off the loop)."""
        return len(self._logins)

    def begin_login(
        self,
        username: str | None,
        password: str,
        *,
        from_loopback: bool,
        peer: str,
        done: Callable[[User | None, AccessRefused | None], None],
        certificate: dict[str, Any] | None = None,
    ) -> bool:
        """Authenticate a client: with the store's users, or the configured backends
        (`broker.auth_backends`).

        Calls `done(user, None)` or `done(None, error)`. For a client without
        credentials, one that logs in with its verified client `certificate`
        (given only when the protocol's login asks for it: AMQP EXTERNAL, MQTT
        and STOMP without a password), and, with the internal store alone (the
        default), a password the credential cache remembers or a refusal that
        needs no hash (an unknown user, a user without a password), that happens
        before this returns (and it returns False). Otherwise the password is
        checked off the loop (`login`) or the chain runs, as a task, and this
        returns True: the adapter must handle no more of that client's frames
        until `done` is called.
        """
        if username is None or certificate is not None:
            try:
                if certificate is not None:
                    user = self.authenticate_certificate(
                        certificate, from_loopback=from_loopback, peer=peer
                    )
                else:
                    user = self.authenticate(
                        username, password, from_loopback=from_loopback, peer=peer
                    )
            except AccessRefused as e:
                done(None, e)
            else:
                done(user, None)
            return False
        login: Coroutine[Any, Any, User]
        if self.auth_chain is None:
            self.check_serving()
            try:
                cached = self.users.authenticate_cached(
                    username, password, from_loopback=from_loopback
                )
            except AccessRefused as e:
                if peer:
                    self.login_guard.failed(peer, username, e.text)
                done(None, e)
                return False
            if cached is not None:
                if peer:
                    self.login_guard.succeeded(peer)
                done(cached, None)
                return False
            login = self._login_store(username, password, from_loopback=from_loopback, peer=peer)
        else:
            login = self._login_chain(username, password, from_loopback=from_loopback, peer=peer)
        loop = asyncio.get_running_loop()
        task = loop.create_task(login)
        self._logins.add(task)

        def finished(task: asyncio.Task[User]) -> None:
            self._logins.discard(task)
            if task.cancelled():
                return
            error = task.exception()
            if isinstance(error, AccessRefused):
                done(None, error)
            elif error is not None:
                loop.call_exception_handler({"message": "login failed", "exception": error})
            else:
                done(task.result(), None)

        task.add_done_callback(finished)
        return True

    async def _login_chain(
        self, username: str, password: str, *, from_loopback: bool, peer: str
    ) -> User:
        assert self.auth_chain is not None
        try:
            user = await login_chain(self, self.auth_chain, username, password, peer=peer)
            if user.name in self.users.loopback_users and not from_loopback:
                raise AccessRefused(f"user '{user.name}' can only connect via localhost")
        except AccessRefused as e:
            if peer:
                self.login_guard.failed(peer, username, e.text)
            raise
        if peer:
            self.login_guard.succeeded(peer)
        return user

    def check_serving(self) -> None:
        """Raise NotServing on a node that serves no client (a standby, see `refusal`).

        Adapters call it before a login, to answer with their protocol's "go
        elsewhere" rather than a refused login."""
        if self.refusal is not None:
            raise NotServing(*self.refusal)

    def refusal_delay(self, peer: str) -> float:
        """Seconds the answer to `peer`'s refused login must wait (`broker.auth_guard`)."""
        return self.login_guard.delay(self.login_guard.failures(peer))
