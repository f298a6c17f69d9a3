"""A small keep-alive HTTP/1.1 client for the deployment's HTTP API.

httpx costs ~1 ms of CPU per request here, more than everything else on the gateway's HTTP
path together; this client writes one request with one ``write`` and parses the answer with
httptools (the parser uvicorn uses), keeping idle connections per origin.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The deployment could not be reached or broke the connection."""


class _Reply:
    __slots__ = ("body", "done", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.done = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer


class HttpUpstream:
    def __init__(self, *, connect_timeout: float, max_idle: int = 64):
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int, bool], deque[_Conn]] = {}
        self._tls = ssl.create_default_context()

    async def post(self, url: str, body: bytes, headers: dict[str, str]
                   ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of ``POST url``; ``UpstreamError`` when unreachable."""
        return await self.request("POST", url, body, headers)

    async def request(self, method: str, url: str, body: bytes, headers: dict[str, str]
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of ``method url``; ``UpstreamError`` when unreachable."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target} HTTP/1.1", f"host: {parts.netloc}",
                f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        key = (host, port, tls)
        pool = self._idle.setdefault(key, deque())
        # A pooled connection may have been closed by the server meanwhile: retry once on
        # a fresh one (requests of the HTTP API are only sent again when nothing was read).
        for attempt in range(2):
            conn = pool.pop() if pool and attempt == 0 else None
            fresh = conn is None
            if conn is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        host, port, ssl=self._tls if tls else None,
                        server_hostname=host if tls else None), self.connect_timeout)
                except (OSError, TimeoutError) as exc:
                    raise UpstreamError(f"cannot connect to {host}:{port}: {exc}") from exc
                conn = _Conn(reader, writer)
            reply = _Reply()
            parser = httptools.HttpResponseParser(reply)
            got_any = False
            try:
                conn.writer.write(data)
                while not reply.done:
                    chunk = await conn.reader.read(65536)
                    if not chunk:
                        raise ConnectionResetError("closed by the deployment")
                    got_any = True
                    parser.feed_data(chunk)
            except (OSError, httptools.HttpParserError) as exc:
                conn.writer.close()
                if fresh or got_any:
                    raise UpstreamError(f"the deployment broke the connection: {exc}") from exc
                continue
            except BaseException:
                conn.writer.close()  # cancelled (timeout) mid-reply: the connection is unusable
                raise
            reply.status = parser.get_status_code()
            if parser.should_keep_alive() and len(pool) < self.max_idle:
                pool.append(conn)
            else:
                conn.writer.close()
            return reply.status, reply.headers, bytes(reply.body)
        raise UpstreamError("the deployment closed the connection")

    async def close(self) -> None:
        for pool in self._idle.values():
            while pool:
                pool.pop().writer.close()
        self._idle.clear()
