"""The hardened HTTP layer of `serve`: a standard-library `ThreadingHTTPServer` in front of any app
with `respond(method, target) -> Response`.

It answers only the Host names it serves (no DNS rebinding), cuts idle, trickling and stuck
connections, queues bursts instead of resetting them, and writes every answer, its own errors
included, as JSON with the same headers. docs/serve.md says why the standard library.
"""
import http.server
import json
import socket
import sys
import threading
import traceback
from typing import NamedTuple

from neuraldx7_jax.errors import Error

HOST = "127.0.0.1"
PORT = 8000
HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",  # nothing from
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}  # elsewhere, not in frames
IDLE_SECONDS = 10.0  # a connection that sends (or takes) nothing for this long is closed
REQUEST_SECONDS = 30.0  # the request line and headers must have arrived by then, however trickled
ANSWER_SECONDS = 60.0  # after the headers, the answer must have been sent by then, or the connection is cut
BACKLOG = 128  # connections the kernel queues before accept (socketserver's default of 5 reset bursts)


class Response(NamedTuple):
    """One HTTP answer."""
    status: int
    content_type: str
    body: bytes
    headers: dict = {}


def json_response(obj, status=200, headers=None):
    return Response(status, "application/json", json.dumps(obj).encode(), headers or {})


def error_response(status, message, headers=None):
    """An error answer: a JSON body {"error", "status"}."""
    return json_response({"error": message, "status": status}, status, headers)


def host_names(host, bound):
    """The Host header names (lower case, IPv6 in brackets) the server answers: `localhost`, the
    loopback addresses, the bound address and what --host names. Others are refused, so a page of
    another origin cannot reach the API through DNS rebinding."""
    names = {"localhost", "127.0.0.1", "[::1]"}
    for name in (host, bound):
        names.add(f"[{name.lower()}]" if ":" in name else name.lower())
    return frozenset(names)


def _host_name(header):
    """The name part of a Host header value ("[::1]:8000" -> "[::1]"), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.rpartition(":")[0] if ":" in header else header


class _Handler(http.server.BaseHTTPRequestHandler):
    """Writes `app.respond`'s answers; one thread per connection (ThreadingHTTPServer). Every
    answer, errors of the HTTP layer included, is our JSON with our headers."""
    app = None  # set by make_server: what answers, `respond(method, target) -> Response`
    server_version = "neuraldx7"
    default_request_version = "HTTP/1.0"  # errors before the version is read still get a status line
    timeout = IDLE_SECONDS  # each read and write of the socket
    request_seconds = REQUEST_SECONDS
    answer_seconds = ANSWER_SECONDS

    def version_string(self):
        return self.server_version  # no Python version

    def _cut_after(self, seconds):
        self._deadline = threading.Timer(seconds, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def handle_one_request(self):
        self._cut_after(self.request_seconds)  # against trickling clients
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def _cut(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def parse_request(self):
        if len(self.raw_requestline.split()) == 2:  # HTTP/0.9 would get the answer without headers
            self.command, self.requestline, self.request_version = None, "", self.default_request_version
            self.send_error(400, "the request line needs an HTTP version, e.g. GET / HTTP/1.1")
            return False
        ok = super().parse_request()
        self._deadline.cancel()  # the headers are in: the answer has its own, longer deadline
        self._cut_after(self.answer_seconds)
        return ok

    def send_error(self, code, message=None, explain=None):
        """http.server's errors (bad request lines, methods without a do_ method...) as ours."""
        self.close_connection = True
        if code == 501 and self.command:  # a method we have no do_ for: the app says 404 or 405, as for POST
            self._answer(self.command)
        else:
            self._send(error_response(int(code), message or http.HTTPStatus(code).phrase), "GET")

    def _answer(self, method):
        host = self.headers.get("Host")
        if host is None or _host_name(host) not in self.server.host_names:
            self._send(error_response(403, f"Host {host!r} is not served here; use {url_of(self.server)}"), method)
            return
        try:
            response = self.app.respond(method, self.path)
        except Exception:  # a bug, not the client's fault: say so and keep serving
            traceback.print_exc(file=sys.stderr)
            response = error_response(500, "internal error; the server's output has the details")
        self._send(response, method)

    def _send(self, response, method):
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in {**HEADERS, **response.headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)

    def do_GET(self):
        self._answer("GET")

    def do_HEAD(self):
        self._answer("HEAD")

    def do_POST(self):
        self._answer("POST")

    def do_PUT(self):
        self._answer("PUT")

    def do_DELETE(self):
        self._answer("DELETE")

    def log_message(self, format, *args):
        pass  # quiet: client errors are in the answers, server errors go to stderr


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: nothing to report
        super().handle_error(request, client_address)


def check_port(port):
    """Raises Error unless `port` is a TCP port, 0..65535 (0: any free one)."""
    if not 0 <= port <= 65535:
        raise Error(f"bad port {port}: a TCP port is in 0..65535 (0: any free one)")


def make_server(app, host=HOST, port=PORT, idle_seconds=IDLE_SECONDS, request_seconds=REQUEST_SECONDS,
                answer_seconds=ANSWER_SECONDS):
    """A ThreadingHTTPServer for `app` bound to host:port (port 0: a free one), not yet serving.
    Connections idle for `idle_seconds`, without a whole request after `request_seconds`, or
    without the whole answer `answer_seconds` after that, close."""
    handler = type("Handler", (_Handler,), {"app": app, "timeout": idle_seconds, "request_seconds": request_seconds,
                                            "answer_seconds": answer_seconds})
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (_Server,), {"address_family": family})
    try:
        server = server_class((host, port), handler)
    except OSError as e:
        raise Error(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None
    server.host_names = host_names(host, server.server_address[0])
    return server


def url_of(server):
    """http://HOST:PORT/ of a bound server."""
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
