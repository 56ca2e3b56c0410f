"""A second server refuses to start on a gRPC port already in use. gRPC enables SO_REUSEPORT by
default, which let two servers share a port and split the connections between them (sessions
turning up NOT_FOUND at random); the server turns it off."""

import subprocess

from server_harness import free_port


def test_second_server_on_the_same_port_refuses_to_start(start_server, server_bin, tiny_model):
    first = start_server()
    args = [server_bin, "--listen", first.target,
            "--metrics-listen", f"127.0.0.1:{free_port()}", "--model", f"tiny={tiny_model}"]
    second = subprocess.run(args, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert second.returncode != 0, "a second server started on a port in use"
    assert f"cannot listen on {first.target}" in second.stderr, second.stderr
    # The first one still serves every call.
    client = first.client()
    s = client.create_session()
    assert client.get_session(s.id).id == s.id
    client.close()
