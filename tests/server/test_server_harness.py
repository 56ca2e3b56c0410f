"""The harness itself (server_harness.ServerProcess): a server whose port another process took
between free_port's pick and the server's bind (a parallel test) starts again on new ports
instead of failing the test; a server on ports its caller chose is not moved."""

import socket

import server_harness
from server_harness import ServerProcess


def test_a_server_whose_port_was_taken_starts_on_new_ports(server_bin, tiny_model, tmp_path,
                                                           monkeypatch):
    taken = []
    pick = server_harness.free_port

    def pick_then_take():
        port = pick()
        if not taken:  # the first pick is taken before the server binds it
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen()
            taken.append(s)
        return port

    monkeypatch.setattr(server_harness, "free_port", pick_then_take)
    server = ServerProcess(server_bin, tiny_model, str(tmp_path))
    try:
        server.wait_serving()
        assert server.relaunches == 1
        assert server.port != taken[0].getsockname()[1]
        assert server.client().models()
    finally:
        server.stop(check=True)
        taken[0].close()
