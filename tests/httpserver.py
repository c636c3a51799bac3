"""A local HTTP file server for download tests (127.0.0.1 only), with switchable faults.

``LocalServer`` serves ``files`` (URL path -> bytes) from a background thread, honours single
``Range: bytes=a-[b]`` requests with 206, and counts hits per path. Faults per path::

    server.fault("/f", drop_at=K)               close the connection once the body reaches
                                                absolute byte K, on the next request only
    server.fault("/f", drop_at=K, always=True)  ... on every request (never serves byte K)
    server.fault("/f", status=404)              answer 404 (or 403, 500, ...)
    server.fault("/f", ignore_range=True)       answer 200 with the whole file despite Range
    server.fault("/f", no_length=True)          send no Content-Length (the body ends when the
                                                connection closes; with drop_at: truncated)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Fault:
    drop_at: int | None = None
    always: bool = False
    status: int | None = None
    ignore_range: bool = False
    no_length: bool = False


class LocalServer:
    """Threaded HTTP server on 127.0.0.1 with an ephemeral port; use as a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.faults: dict[str, Fault] = {}
        self.hits: Counter[str] = Counter()
        self.ranges: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """Full URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; return its URL."""
        self.files["/" + path.lstrip("/")] = data
        return self.url(path)

    def fault(self, path: str, **kwargs: object) -> None:
        """Install a fault for ``path`` (see the module docstring)."""
        self.faults["/" + path.lstrip("/")] = Fault(**kwargs)  # type: ignore[arg-type]

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                with server._lock:
                    server.hits[path] += 1
                    server.ranges.append((path, rng))
                    fault = server.faults.get(path, Fault())
                    data = server.files.get(path)
                    if fault.drop_at is not None and not fault.always:
                        server.faults[path] = Fault(ignore_range=fault.ignore_range,
                                                    no_length=fault.no_length)
                if fault.status is not None:
                    return self._plain(fault.status)
                if data is None:
                    return self._plain(404)
                start, end = 0, len(data) - 1
                status = 200
                if rng and not fault.ignore_range:
                    spec = rng.strip().removeprefix("bytes=")
                    first, _, last = spec.partition("-")
                    start = int(first) if first else 0
                    end = min(int(last), end) if last else end
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if fault.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                stop = end + 1
                if fault.drop_at is not None:
                    stop = max(start, min(stop, fault.drop_at))
                self.wfile.write(data[start:stop])
                if stop <= end and not fault.no_length:  # a dropped connection: close early
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                return None

            def _plain(self, status: int) -> None:
                body = f"{status}\n".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    """A started :class:`LocalServer`, stopped after the test."""
    with LocalServer() as srv:
        yield srv


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
