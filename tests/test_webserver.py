"""The HTTP layer (`webserver`) in front of the page's App, over raw sockets and urllib: every answer
is our JSON with our headers, only our Host names are answered, idle, trickling and stuck
connections are cut, a bug is a 500, and bursts are queued, not reset."""
import concurrent.futures
import json
import socket
import struct
import threading
import time
import urllib.parse

import pytest

from conftest import busy_or_ok, get, get_json
from neuraldx7_jax import webserver


def raw(url, request, timeout=30):
    """The whole answer to the bytes `request` sent on a fresh connection, read until the server closes."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def parse_answer(answer):
    """(status line, headers dict, body) of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], dict(line.split(": ", 1) for line in lines[1:]), body


@pytest.mark.parametrize("request_line, status", [
    ("PATCH /api/info HTTP/1.1", 405), ("OPTIONS /api/info HTTP/1.1", 405), ("TRACE /api/info HTTP/1.1", 405),
    ("CONNECT /api/info HTTP/1.1", 405), ("CONNECT 127.0.0.1:443 HTTP/1.1", 405), ("BREW /api/info HTTP/1.1", 405), ("PATCH /nothing HTTP/1.1", 404),
    ("GET /api/info", 400), ("GET", 400), ("GET /api/info HTTP/x", 400), ("GET /api/info HTTP/2.0", 505),
])
def test_every_answer_is_our_json_with_our_headers(url, request_line, status):
    line, headers, body = parse_answer(raw(url, request_line.encode() + b"\r\nHost: 127.0.0.1\r\n\r\n"))
    assert line.startswith("HTTP/1.0 ") and line.split()[1] == str(status), line
    assert headers["Content-Type"] == "application/json" and json.loads(body)["status"] == status
    assert headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Server"] == "neuraldx7"


def test_only_our_own_host_names_are_answered(url):
    port = urllib.parse.urlsplit(url).port
    for host, status in [("127.0.0.1", 200), (f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200),
                         (f"LOCALHOST:{port}", 200), (f"[::1]:{port}", 200), (f"evil.example:{port}", 403),
                         ("evil.example", 403), ("127.0.0.1.evil.example", 403), (f"[::2]:{port}", 403)]:
        line, _, body = parse_answer(raw(url, f"GET /api/info HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()))
        assert line.split()[1] == str(status), (host, body)
    line, _, body = parse_answer(raw(url, b"GET /api/info HTTP/1.0\r\n\r\n"))
    assert line.split()[1] == "403" and "Host None" in json.loads(body)["error"]
    assert webserver.host_names("0.0.0.0", "0.0.0.0") == {"localhost", "127.0.0.1", "[::1]", "0.0.0.0"}
    assert "[fe80::1]" in webserver.host_names("fe80::1", "fe80::1")


def test_idle_and_trickling_clients_are_cut_off(app):
    server = webserver.make_server(app, "127.0.0.1", 0, idle_seconds=1.0, request_seconds=2.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        before = threading.active_count()
        idle = [socket.create_connection(server.server_address, timeout=30) for _ in range(20)]
        t = time.perf_counter()
        assert all(s.recv(1) == b"" for s in idle)  # closed by the server
        assert time.perf_counter() - t < 10
        with socket.create_connection(server.server_address, timeout=30) as s:
            t = time.perf_counter()
            request = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            try:
                for byte in request * 10:  # one byte each 0.3 s: never idle, never done
                    s.send(bytes([byte]))
                    time.sleep(0.3)
                    assert time.perf_counter() - t < 8, "a trickling client kept its connection"
            except (BrokenPipeError, ConnectionResetError):
                pass
        for s in idle:
            s.close()
        deadline = time.time() + 10
        while threading.active_count() > before and time.time() < deadline:
            time.sleep(0.1)
        assert threading.active_count() <= before
    finally:
        server.shutdown()
        server.server_close()


def test_a_client_leaving_mid_answer_prints_nothing(url, capfd):
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    for seed in range(1000, 1010):
        s = socket.create_connection((host, port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        s.sendall(f"GET /api/cartridge?seed={seed}&temperature=0.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        s.close()
    time.sleep(3)
    assert get_json(url + "api/info")["latent"] == 4
    assert "Traceback" not in capfd.readouterr().err


def test_a_server_bug_is_a_500_with_a_json_body_and_the_server_goes_on(url, app, monkeypatch, capsys):
    monkeypatch.setattr(app, "info", lambda query: 1 / 0)
    status, headers, body = get(url + "api/info")
    assert status == 500 and "internal error" in json.loads(body)["error"]
    assert "ZeroDivisionError" in capsys.readouterr().err
    monkeypatch.undo()
    assert get_json(url + "api/info")["latent"] == 4


@pytest.mark.slow
def test_a_burst_of_200_new_seed_requests_over_http_loses_none(app, url, monkeypatch):
    """200 connections at once asking new cartridges: none is reset or left hanging (the listen
    backlog was socketserver's 5), each is answered 200 or 503 with Retry-After, and the server
    answers a new model request afterwards."""
    monkeypatch.setattr(app, "slot_seconds", 2.0)
    together = threading.Barrier(200)

    def ask(i):
        together.wait()
        return get(url + f"api/cartridge?seed={32000 + i}")
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(ask, range(200)))  # a reset or a timeout raises here
    assert all(busy_or_ok(*a) for a in answers) and any(a[0] == 200 for a in answers)
    assert get_json(url + "api/cartridge?seed=32999")["seed"] == 32999


def test_an_answer_taking_too_long_is_cut_off(app, monkeypatch):
    """The whole answer has a deadline too: a request stuck after its headers loses its connection."""
    monkeypatch.setattr(app, "info", lambda query: time.sleep(30))
    server = webserver.make_server(app, "127.0.0.1", 0, answer_seconds=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address, timeout=30) as s:
            t = time.perf_counter()
            s.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(1) == b"" and time.perf_counter() - t < 10
    finally:
        server.shutdown()
        server.server_close()
