"""TLS termination over memory BIOs, so a failed handshake still sends its alert.

asyncio's own TLS server drops the connection without flushing the alert
OpenSSL produced, so a client whose certificate is rejected sees a bare
connection reset. The real hub (Erlang ssl) sends the alert: ``unknown ca``,
``certificate expired``, ``certificate revoked``... Device clients turn those
into clear error lines, so the local hub must send them too.
`TlsServerProtocol` wraps any asyncio protocol (here websockets'
`ServerConnection`) and gives it an `asyncio.Transport` carrying plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["TlsServerProtocol", "handshake_failure_reason"]

log = logging.getLogger("nhlink.testing.tls")

_READ_SIZE = 256 * 1024


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


def handshake_failure_reason(exc: BaseException) -> str:
    """A one-line description of a server-side handshake failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__


class TlsServerProtocol(asyncio.Protocol):
    """Server-side TLS in front of `app`; `app` sees plaintext once the handshake succeeds."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app: asyncio.Protocol,
        *,
        handshake_timeout: float = 10.0,
        before_handshake: Callable[[], None] | None = None,
        on_failure: Callable[[str, Any], None] | None = None,
    ) -> None:
        self._context = context
        self._app = app
        self._handshake_timeout = handshake_timeout
        self._before_handshake = before_handshake
        self._on_failure = on_failure
        self._state = _State.HANDSHAKE
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj: ssl.SSLObject | None = None
        self._raw: asyncio.Transport | None = None
        self._app_transport: _TlsTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self.read_paused = False
        self.closing = False

    # -- raw transport callbacks -----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        if self._before_handshake is not None:
            self._before_handshake()
        self._sslobj = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handshake_timeout, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._state is _State.HANDSHAKE:
            self._do_handshake()
        elif self._state is _State.OPEN:
            self.deliver()

    def eof_received(self) -> bool | None:
        if self._state is _State.OPEN:
            self._incoming.write_eof()
            self.deliver()
            if self._state is _State.OPEN:
                self._state = _State.CLOSED
                self._app.eof_received()
        elif self._state is _State.HANDSHAKE:
            self._fail("connection closed during the handshake", abort=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        attached = self._app_transport is not None
        self._state = _State.CLOSED
        if attached:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._app_transport is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._app_transport is not None:
            self._app.resume_writing()

    # -- handshake --------------------------------------------------------------

    def _do_handshake(self) -> None:
        assert self._sslobj is not None
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert
            self._fail(handshake_failure_reason(exc), abort=False)
            return
        self._flush()
        self._cancel_timer()
        self._state = _State.OPEN
        self._app_transport = _TlsTransport(self)
        self._app.connection_made(self._app_transport)
        if self._write_paused:
            self._app.pause_writing()
        self.deliver()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state is _State.HANDSHAKE:
            self._fail("handshake timeout", abort=True)

    def _fail(self, reason: str, *, abort: bool) -> None:
        self._cancel_timer()
        self._state = _State.CLOSED
        peer = self._raw.get_extra_info("peername") if self._raw is not None else None
        log.debug("TLS handshake with %s failed: %s", peer, reason)
        if self._on_failure is not None:
            self._on_failure(reason, peer)
        if self._raw is not None:
            if abort:
                self._raw.abort()
            else:
                self._raw.close()  # after the buffered alert is written

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- data -----------------------------------------------------------------

    def deliver(self) -> None:
        """Pass decrypted bytes to the app while it reads."""
        assert self._sslobj is not None
        while self._state is _State.OPEN and not self.read_paused:
            try:
                data = self._sslobj.read(_READ_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except ssl.SSLZeroReturnError:
                self._flush()
                self._state = _State.CLOSED
                self._app.eof_received()
                if self._raw is not None:
                    self._raw.close()
                break
            except ssl.SSLError as exc:
                log.debug("TLS read error: %s", handshake_failure_reason(exc))
                self.abort()
                break
            if not data:
                break
            self._app.data_received(data)
        self._flush()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state is not _State.OPEN or self.closing:
            return
        assert self._sslobj is not None
        view = memoryview(data)
        while view:
            written = self._sslobj.write(view)
            view = view[written:]
        self._flush()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self._sslobj is not None and self._state is _State.OPEN:
            with contextlib.suppress(ssl.SSLError):
                self._sslobj.unwrap()  # queues close_notify
            self._flush()
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        self.closing = True
        if self._raw is not None:
            self._raw.abort()

    def _flush(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._raw.is_closing():
            self._raw.write(self._outgoing.read())

    @property
    def handshaking(self) -> bool:
        return self._state is _State.HANDSHAKE

    # -- accessors for _TlsTransport -------------------------------------------

    @property
    def raw(self) -> asyncio.Transport:
        assert self._raw is not None
        return self._raw

    @property
    def sslobj(self) -> ssl.SSLObject:
        assert self._sslobj is not None
        return self._sslobj

    @property
    def context(self) -> ssl.SSLContext:
        return self._context


class _TlsTransport(asyncio.Transport):
    """The plaintext side handed to the wrapped protocol."""

    def __init__(self, tls: TlsServerProtocol) -> None:
        super().__init__()
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.sslobj
        if name == "sslcontext":
            return self._tls.context
        if name == "peercert":
            return self._tls.sslobj.getpeercert()
        if name == "cipher":
            return self._tls.sslobj.cipher()
        return self._tls.raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._tls.closing or self._tls.raw.is_closing()

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports cannot half-close")

    def pause_reading(self) -> None:
        self._tls.read_paused = True
        self._tls.raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._tls.read_paused:
            return
        self._tls.read_paused = False
        self._tls.raw.resume_reading()
        asyncio.get_running_loop().call_soon(self._tls.deliver)

    def is_reading(self) -> bool:
        return not self._tls.read_paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._tls.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tls.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._tls.raw.get_write_buffer_limits()
