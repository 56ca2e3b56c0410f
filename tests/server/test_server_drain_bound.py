"""SIGTERM stops the server in bounded time whatever a request is doing: a request that does
not return once cancelled (here a SYNC ingest whose store stopped answering, the fault spec's
`hang`) is abandoned kAbandonRequestsAfter (5 s) after the transport cancelled it, and the
process exits 1 saying so. It once kept a server running 90 s past a 30 s grace."""

import threading

import grpc

from durability_harness import FaultFile
from server_harness import wait_until


def test_sigterm_exits_although_a_request_never_returns(start_server, tmp_path):
    faults = FaultFile(str(tmp_path / "faults"))
    server = start_server("--session-store", str(tmp_path / "store"), "--durability", "sync",
                          *faults.flag(), grace_s=1.0)
    client = server.client(timeout=300)
    session = client.create_session()
    client.ingest(session.id, ["A first part that reaches the store. "])
    before = client.get_session(session.id)

    faults.set("any:hang")
    outcome = {}

    def stuck_ingest():
        try:
            client.ingest(session.id, ["A second part the store never takes. "])
            outcome["code"] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            outcome["code"] = e.code()

    caller = threading.Thread(target=stuck_ingest, daemon=True)
    caller.start()
    wait_until(lambda: "the op never returns" in server.stderr_text(), timeout=60,
               message="the ingest to reach the hung store")
    server.terminate()
    # grace 1 s + 2 s for DRAINING answers + 5 s for cancelled requests, and ample slack.
    code = server.wait_exit(timeout=60)
    log = server.stderr_text()
    assert code is not None, "mnemo-server still running 60 s after SIGTERM:\n" + log
    assert code == 1, f"exit status {code}:\n{log}"
    assert "1 requests still running 5s after they were cancelled; exiting without them" in log
    caller.join(timeout=30)
    assert outcome.get("code") not in (None, grpc.StatusCode.OK), outcome
    assert before.state_version == 1
    client.close()
