"""Who may talk to betty-mcp's HTTP front ends (MCP over streamable HTTP, and the Anthropic gateway).

One policy for both: loopback by default; any other bind needs a token; the Host and Origin headers
must name this server (DNS-rebinding protection), unless bound to every address with no name given,
where only the token guards. And one HTTP/1.1 protocol that disconnects slow clients.

    policy = HttpPolicy.for_bind("127.0.0.1", 8765, allowed_hosts=[])
    require_token_off_loopback("0.0.0.0", token=None, what="the server")   # ConfigError
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from betty_mcp.core.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
EVERY_ADDRESS = ("0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_off_loopback(host: str, token: str | None, what: str) -> None:
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"binding {what} to {host} exposes it beyond this machine: pass --token or set $BETTY_MCP_TOKEN"
        )


@dataclass(frozen=True)
class HttpPolicy:
    """The Host and Origin values accepted (``fnmatch`` patterns), and whether they are checked at all."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    check_host: bool

    @classmethod
    def for_bind(cls, host: str, port: int, allowed_hosts: list[str]) -> HttpPolicy:
        hosts = [*LOOPBACK_HOSTS, *allowed_hosts]
        origins = [*LOOPBACK_ORIGINS, *(f"{s}://{h}" for h in allowed_hosts for s in ("http", "https"))]
        if host not in EVERY_ADDRESS and not is_loopback(host):
            hosts.append(f"{host}:{port}")
            origins += [f"http://{host}:{port}", f"https://{host}:{port}"]
        check_host = not (host in EVERY_ADDRESS and not allowed_hosts)
        if not check_host:
            log.warning(
                "bound to %s with no --allowed-host: Host/Origin checks are off; the token guards", host
            )
        return cls(tuple(hosts), tuple(origins), check_host)


def fast_http() -> bool:
    """httptools' parser when installed: measured faster than h11 for both HTTP front ends (uvloop was
    not, for the MCP server: its loop stays asyncio's); h11, pure Python, otherwise."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def head_deadline_protocol(seconds: float, *, fast: bool = False) -> type:
    """uvicorn's HTTP/1.1 protocol (httptools' parser when ``fast``, else h11) that closes a connection
    whose request head has not arrived in ``seconds``: uvicorn's own keep-alive timer is reset by every
    byte, so a client dripping its headers one byte at a time would hold a connection forever."""
    if fast:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class HeadDeadline(Base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()

        def _await_head(self) -> None:
            waiting_on = self.cycle  # None, or the finished one: a new request replaces it

            def too_late() -> None:
                if self.cycle is waiting_on and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, too_late)

    return HeadDeadline


def uvicorn_server(
    app: Any, *, host: str, port: int, head_timeout: float, fast: bool = False, **options: Any
) -> Any:
    """A uvicorn server for one of the HTTP front ends: no access log, our logging, slow clients cut."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=head_deadline_protocol(head_timeout, fast=fast),
        **options,
    )
    return uvicorn.Server(config)
