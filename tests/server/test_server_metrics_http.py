"""The metrics endpoint cannot be held by slow or idle clients: connections are served at once,
each with a deadline (server/metrics_http_server.h). One connection sending a byte every few
seconds once blocked scrapes for 45 s, 30 idle connections for 153 s."""

import socket
import threading
import time
import urllib.request

import pytest


def _scrape(server, timeout):
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


@pytest.fixture
def metrics_server(start_server):
    return start_server()


def test_scrapes_are_answered_while_idle_and_slow_clients_hold_connections(metrics_server):
    server = metrics_server
    idle = [socket.create_connection(("127.0.0.1", server.metrics_port)) for _ in range(30)]
    stop = threading.Event()

    def trickle():  # one byte of a request line every second
        with socket.create_connection(("127.0.0.1", server.metrics_port)) as s:
            for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                if stop.wait(1.0):
                    return
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    return  # closed by the server at its deadline: fine

    slow = threading.Thread(target=trickle)
    slow.start()
    try:
        time.sleep(0.5)  # the idle and slow connections are accepted first
        for _ in range(3):
            # Each scrape must finish well inside the 5 s a held connection may keep the
            # single-threaded endpoint busy (30 of them: 150 s before the fix).
            assert "mnemo_" in _scrape(server, timeout=30)
    finally:
        stop.set()
        slow.join()
        for s in idle:
            s.close()


def test_idle_connection_is_closed_at_its_deadline(metrics_server):
    with socket.create_connection(("127.0.0.1", metrics_server.metrics_port)) as s:
        s.settimeout(30)
        assert s.recv(1) == b"", "an idle metrics connection was not closed"
    assert "mnemo_" in _scrape(metrics_server, timeout=10)


def test_more_connections_than_the_table_holds_still_scrape(metrics_server):
    held = [socket.create_connection(("127.0.0.1", metrics_server.metrics_port))
            for _ in range(100)]
    try:
        time.sleep(0.3)
        assert "mnemo_" in _scrape(metrics_server, timeout=30)
    finally:
        for s in held:
            s.close()
