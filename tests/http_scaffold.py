"""The one HTTP scaffold the fake servers in tests share: a threaded server on 127.0.0.1 (a free port),
started and stopped by ``with``, and a handler base with JSON replies and the faults tests inject.

A fake server subclasses :class:`LocalServer` and sets ``Handler`` to a :class:`QuietHandler` subclass;
the handler reaches its server object as ``self.owner``.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, no request log, JSON helpers, and the faults: ``cut`` (close without a reply), ``stall``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    @property
    def owner(self) -> "LocalServer":
        return self.server.owner

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, body=b"", headers: dict | None = None, head: bool = False) -> None:
        """Reply ``status``; a dict or list body is sent as JSON."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def cut(self) -> None:
        """Drop the connection without a reply (a cut connection, as the client sees it)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stall(self) -> None:
        """Answer nothing until the server stops (the client times out first)."""
        self.owner.stopping.wait(60)
        self.cut()

    def drip(self, status: int = 200, body: bytes = b"x" * 100_000, every: float = 0.1,
             whole_head: bool = False) -> None:
        """Answer one byte every ``every`` s until the server stops: from the status line on, or, with
        ``whole_head``, after sending the status line and headers at once. No read ever waits long."""
        head = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
        data = head.encode() + body
        self.close_connection = True
        try:
            if whole_head:
                self.wfile.write(data[:len(head)])
                self.wfile.flush()
                data = data[len(head):]
            for i in range(len(data)):
                if self.owner.stopping.wait(every):
                    break
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                self.owner.dripped += 1
        except OSError:  # the client gave up and closed the connection
            pass
        self.cut()


class LocalServer:
    """``with MyServer(...) as s: ... s.url ...``: serves ``self.Handler`` on 127.0.0.1 in a daemon thread."""

    Handler: type[QuietHandler] = QuietHandler

    def __init__(self):
        self.stopping = threading.Event()
        self.dripped = 0  # bytes sent by drip()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.Handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()  # release stalled handlers first
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
