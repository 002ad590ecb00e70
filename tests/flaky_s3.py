"""A fault-injecting HTTP proxy for tests: an unreliable object store in front of moto's S3 server.

Clients (s3fs/botocore, pyarrow through fsspec) talk to the proxy on 127.0.0.1 as to any S3
endpoint. A share of the requests fails the way object stores fail in production: the connection
is reset before an answer, the store answers 503 SlowDown or 500 InternalError, the answer comes
late, or a GET's body stops half-way. Which request fails is a pure function of the seed, the
request (method, path, query without multipart upload ids) and how often that request was seen,
so a run meets the same faults whatever the thread interleaving; each kind is also dealt once, to
the first request it fits, so even a short run meets them all. The same request never fails more
than `max_repeats` times in a row: a client with retries always gets through.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

FAULTS = ("reset", "slow_down", "internal_error", "delay", "truncate")
_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>flaky</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class FlakyS3Proxy:
    """Forwards every request to `upstream` (an http://host:port S3 endpoint), injecting faults."""

    def __init__(
        self,
        upstream: str,
        seed: int,
        rate: float = 0.16,
        max_repeats: int = 2,
        kinds: tuple[str, ...] = FAULTS,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seed, self.rate, self.max_repeats, self.kinds = seed, rate, max_repeats, kinds
        self.faults: Counter[str] = Counter()  # injected, by kind
        self.requests: Counter[str] = Counter()  # forwarded, by method
        self._seen: Counter[str] = Counter()
        self._owed = list(kinds) if rate > 0 else []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FlakyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw(self, method: str, target: str) -> str | None:
        """The fault for this occurrence of the request, or None; counts what it decides."""
        path, _, query = target.partition("?")
        stable = urlencode(
            sorted((k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "uploadId")
        )
        key = f"{method} {path}?{stable}"
        with self._lock:
            nth = self._seen[key]
            self._seen[key] += 1
        digest = hashlib.sha256(f"{self.seed}|{key}|{nth}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        drawn = self.kinds[digest[8] % len(self.kinds)] if nth < self.max_repeats and u < self.rate else None
        with self._lock:  # a kind not dealt yet goes to the first new request it fits
            owed = next((k for k in self._owed if nth == 0 and _fit(k, method) == k), None)
            if owed:
                self._owed.remove(owed)
        fault = _fit(owed or drawn, method)
        with self._lock:
            self.faults[fault or "none"] += 1
        return fault


def _fit(fault: str | None, method: str) -> str | None:
    """Only a GET has a body to cut; an S3 POST (multipart create/complete) is not idempotent, so it
    fails before reaching the store, with an answer, rather than by a reset the client cannot read."""
    if fault == "truncate" and method != "GET":
        fault = "reset"
    if fault == "reset" and method == "POST":
        fault = "slow_down"
    return fault


def _handler(proxy: FlakyS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                    if size == 0:
                        return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                return resp.status, resp.getheaders(), resp.read()
            finally:
                conn.close()

        def _error(self, status: int, code: str, message: str) -> None:
            payload = _ERROR_XML.format(code=code, message=message).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _reset(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):  # linger 0: close() sends a reset, not a clean FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        def _handle(self) -> None:
            body = self._body()
            fault = proxy.draw(self.command, self.path)
            if fault == "reset":
                return self._reset()
            if fault == "slow_down":
                return self._error(503, "SlowDown", "Please reduce your request rate.")
            if fault == "internal_error":
                return self._error(
                    500, "InternalError", "We encountered an internal error. Please try again."
                )
            if fault == "delay":
                time.sleep(0.3)
            status, headers, payload = self._forward(body)
            with proxy._lock:
                proxy.requests[self.command] += 1
            cut = fault == "truncate" and len(payload) > 1
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            self.send_header("Content-Length", length if self.command == "HEAD" else str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)
            if cut:  # the body stops half-way: the client sees fewer bytes than Content-Length promised
                self.wfile.flush()
                self._reset()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
