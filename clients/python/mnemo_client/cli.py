"""mnemo-client: a command line for a mnemo server.

    python -m mnemo_client --target 127.0.0.1:50051 models
    S=$(python -m mnemo_client create --label doc=gpl3)
    python -m mnemo_client ingest "$S" /usr/share/common-licenses/GPL-3
    python -m mnemo_client generate --session "$S" --prompt "In short," --max-tokens 40 \\
        --temperature 0

Generated text streams to stdout; progress and summaries go to stderr. Exit status: 0 on
success, 1 when the server answers with an error (its status code name and message are
printed, with the fields a BadRequest names), 2 for a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"label {pair!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _label_arg(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def _ttl_arg(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("--ttl-s must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnemo-client", description="Command line for a mnemo inference server.")
    parser.add_argument("--target", default=os.environ.get("MNEMO_TARGET", DEFAULT_TARGET),
                        help="server address HOST:PORT (default $MNEMO_TARGET or "
                             f"{DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline of each call in seconds (default: none)")
    parser.add_argument("--no-retry", action="store_true",
                        help="do not retry calls the server refused without effect "
                             "(SESSION_MOVED, DRAINING) or that broke on the network")
    parser.add_argument("--json", action="store_true",
                        help="print responses as JSON (one object per line)")
    tls = parser.add_argument_group(
        "TLS", "any of these makes the connection TLS (plaintext without them)")
    tls.add_argument("--tls-ca", metavar="FILE", default=None,
                     help="CA certificates (PEM) to verify the server with (default: the "
                          "system's roots)")
    tls.add_argument("--tls-cert", metavar="FILE", default=None,
                     help="client certificate chain (PEM) for mTLS; needs --tls-key")
    tls.add_argument("--tls-key", metavar="FILE", default=None,
                     help="the client certificate's private key (PEM)")
    tls.add_argument("--tls-server-name", metavar="NAME", default=None,
                     help="name the server's certificate must carry (default: the target's "
                          "host)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="read the bearer token for a server with an auth file from FILE "
                             "(default: $MNEMO_TOKEN; never give a token itself on the "
                             "command line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("models", help="list the loaded models")
    sub.add_parser("health", help="grpc.health.v1 status of the server")

    p = sub.add_parser("create", help="open a session; prints its id")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--label", action="append", default=[], type=_label_arg,
                   metavar="KEY=VALUE", help="a label (repeatable)")
    p.add_argument("--ttl-s", type=_ttl_arg, default=None, help="idle time-to-live, seconds")
    p.add_argument("--memory-tokens", type=int, default=0,
                   help="tokens of memory to keep (default: the model's)")
    p.add_argument("--durability", choices=["none", "async", "sync"], default=None,
                   help="how changes reach the server's session store (default: the server's)")

    p = sub.add_parser("get", help="describe a session")
    p.add_argument("session_id", metavar="ID")

    p = sub.add_parser("list", help="list sessions, oldest first")
    p.add_argument("--label", action="append", default=[], type=_label_arg,
                   metavar="KEY=VALUE", help="only sessions with this label (repeatable)")

    p = sub.add_parser("delete", help="delete a session")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--expected-version", type=int, default=0)

    p = sub.add_parser("fork", help="copy a session; prints the new id")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--label", action="append", default=[], type=_label_arg,
                   metavar="KEY=VALUE")
    p.add_argument("--expected-version", type=int, default=0)

    p = sub.add_parser("export", help="write a session's snapshot to a file")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--expected-version", type=int, default=0)

    p = sub.add_parser("import", help="a session from a snapshot file; prints its id")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--session", default="", metavar="ID",
                   help="replace this session's state instead of creating a session")
    p.add_argument("--expected-version", type=int, default=0)
    p.add_argument("--label", action="append", default=[], type=_label_arg,
                   metavar="KEY=VALUE", help="a label (repeatable; default: the snapshot's)")
    p.add_argument("--durability", choices=["none", "async", "sync"], default=None)

    p = sub.add_parser("ingest", help="stream a UTF-8 file into a session")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--chunk-bytes", type=int, default=65536)
    p.add_argument("--expected-version", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("generate", help="stream a continuation to stdout")
    p.add_argument("--session", default="", metavar="ID",
                   help="session to continue (default: one-shot on --model)")
    p.add_argument("--model", default="")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", default=None, metavar="TEXT")
    group.add_argument("--prompt-file", default=None, metavar="FILE")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], metavar="S",
                   help="stop before this string (repeatable)")
    p.add_argument("--stop-id", action="append", default=[], type=int, metavar="ID")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--commit", choices=["keep_all", "keep_prompt", "scratch"], default=None)
    p.add_argument("--expected-version", type=int, default=0)

    p = sub.add_parser("score", help="log-probabilities of a text given a session")
    p.add_argument("--session", default="", metavar="ID")
    p.add_argument("--model", default="")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--text", default=None)
    group.add_argument("--file", default=None)
    p.add_argument("--commit", action="store_true", help="keep the text in the session")

    p = sub.add_parser("encode", help="an encoder's vectors of a document, written to a file")
    p.add_argument("file", metavar="FILE", help="the document: UTF-8 text, or ids with --ids")
    p.add_argument("--output", required=True, metavar="OUT",
                   help="raw little-endian float32, row after row; 'ROWS DIM' goes to stdout")
    p.add_argument("--ids", action="store_true",
                   help="FILE holds token ids (whitespace- or comma-separated)")
    p.add_argument("--model", default="", help="the encoder (default: the first one)")
    p.add_argument("--pool", choices=["none", "mean", "first", "funnel"], default="none")
    p.add_argument("--global-positions", default="", metavar="P,P,…",
                   help="document positions that attend globally, ascending")
    p.add_argument("--window", type=int, default=0, metavar="N",
                   help="tokens per pass (default: the model's maximum)")
    p.add_argument("--mlm-positions", default="", metavar="P,P,…",
                   help="positions whose masked-LM log-probabilities to write to --mlm-output")
    p.add_argument("--mlm-output", default=None, metavar="F",
                   help="raw little-endian float32 [positions, vocab_size]")
    p.add_argument("--chunk-bytes", type=int, default=65536)

    p = sub.add_parser("tokenize", help="print the token ids of a text")
    p.add_argument("text")
    p.add_argument("--model", default="")

    p = sub.add_parser("detokenize", help="print the text of token ids")
    p.add_argument("ids", nargs="+", type=int)
    p.add_argument("--model", default="")
    return parser


def _encode(client, args) -> int:
    from mnemo_client.utf8 import iter_utf8_chunks
    positions = [int(p) for p in args.global_positions.replace(",", " ").split()]
    mlm = [int(p) for p in args.mlm_positions.replace(",", " ").split()]
    if bool(mlm) != (args.mlm_output is not None):
        raise ValueError("--mlm-positions and --mlm-output go together")
    options = dict(model=args.model, pooling=args.pool, global_positions=positions,
                   window_tokens=args.window, mlm_positions=mlm)
    with open(args.file, "rb") as f:
        if args.ids:
            document = [int(t) for t in f.read().decode("ascii").replace(",", " ").split()]
            result = client.encode(document, **options)
        else:
            result = client.encode(iter_utf8_chunks(f, args.chunk_bytes), **options)
    with open(args.output, "wb") as out:
        out.write(result.data)
    if mlm:
        with open(args.mlm_output, "wb") as out:
            out.write(b"".join(result.mlm[p] for p in mlm))
    print(f"{result.rows} {result.dim}")
    print(f"encoded {result.tokens} tokens in {result.windows} passes", file=sys.stderr)
    return 0


def _print_message(message) -> None:
    from google.protobuf import json_format
    print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))


def _session_line(session) -> str:
    from mnemo.v1 import mnemo_pb2
    tier = mnemo_pb2.StateTier.Name(session.tier).removeprefix("STATE_TIER_").lower()
    labels = ",".join(f"{k}={v}" for k, v in sorted(session.labels.items()))
    return (f"{session.id}\t{session.model}\ttokens={session.tokens_seen}\t"
            f"version={session.state_version}\ttier={tier}\t{labels}")


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: invalid UTF-8 at byte {e.start}") from None


def _generate(client, args) -> int:
    from mnemo.v1 import mnemo_pb2
    prompt = args.prompt if args.prompt_file is None else _read_text(args.prompt_file)
    stream = client.generate(
        args.session, prompt, model=args.model, max_tokens=args.max_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
        stop_ids=args.stop_id, ignore_eos=args.ignore_eos, commit=args.commit,
        expected_state_version=args.expected_version)
    final = None
    printed = False
    try:
        for event in stream:
            kind = event.WhichOneof("event")
            if kind == "delta" and event.delta.text:
                sys.stdout.write(event.delta.text)
                sys.stdout.flush()
                printed = True
            elif kind == "final":
                final = event.final
    except KeyboardInterrupt:
        stream.cancel()
        raise
    except grpc.RpcError:
        if printed:  # end the partial line before the error message
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    sys.stdout.write("\n")
    sys.stdout.flush()
    if final is not None:
        reason = mnemo_pb2.FinishReason.Name(final.finish_reason)
        ttft = final.time_to_first_token.ToNanoseconds() / 1e6
        print(f"[finish: {reason.removeprefix('FINISH_REASON_').lower()}, "
              f"prompt tokens {final.usage.prompt_tokens}, "
              f"generated {final.usage.generated_tokens}, "
              f"memory tokens {final.usage.memory_tokens}, "
              f"version {final.state_version_after}, ttft {ttft:.1f} ms]", file=sys.stderr)
    return 0


def _score(client, args) -> int:
    text = args.text if args.file is None else _read_text(args.file)
    response = client.score(args.session, text=text, model=args.model, commit=args.commit)
    if args.json:
        for token in response.tokens:
            print(json.dumps({"token": token.id, "logprob": token.logprob}))
        print(json.dumps({"summary": {"tokens": len(response.tokens),
                                      "total_bits": response.total_bits,
                                      "bits_per_byte": response.bits_per_byte,
                                      "state_version": response.state_version}}))
    else:
        n = len(response.tokens)
        per_token = response.total_bits / n if n else 0.0
        print(f"scored {n} tokens, total bits {response.total_bits:.3f}, "
              f"bits/token {per_token:.4f}, bits/byte {response.bits_per_byte:.4f}, "
              f"version {response.state_version}")
    return 0


def tls_config(args):
    """The TlsConfig the --tls-* flags ask for, or None (plaintext) when none is given."""
    from mnemo_client.tls import TlsConfig

    if not any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)):
        return None
    return TlsConfig(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
                     server_name=args.tls_server_name)
def _token(args) -> Optional[str]:
    """The bearer token: the first line of --token-file, else $MNEMO_TOKEN, else None."""
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise SystemExit(f"mnemo-client: {args.token_file}: no token on its first line")
        return token
    return os.environ.get("MNEMO_TOKEN") or None


def run(args) -> int:
    """Executes one parsed command; returns the exit status (RpcError propagates)."""
    from mnemo_client import health as health_mod
    from mnemo_client.client import MnemoClient
    from mnemo_client.retry import RetryPolicy

    retry = None if args.no_retry else RetryPolicy()
    with MnemoClient(args.target, timeout=args.timeout, retry=retry,
                     tls=tls_config(args), token=_token(args)) as client:
        cmd = args.command
        if cmd == "models":
            for m in client.models():
                if args.json:
                    _print_message(m)
                else:
                    print(f"{m.name}\t{m.architecture}\tvocab={m.vocab_size}\t"
                          f"memory={m.memory_tokens}\tsegment={m.segment_tokens}\t"
                          f"{m.dtype}\t{m.device}\tstate_bytes={m.state_bytes_per_session}")
        elif cmd == "health":
            status = client.health()
            print(health_mod.STATUS_NAMES.get(status, str(status)))
            return 0 if status == health_mod.SERVING else 1
        elif cmd == "create":
            session = client.create_session(model=args.model, ttl_s=args.ttl_s,
                                            labels=_labels(args.label),
                                            memory_tokens=args.memory_tokens,
                                            durability=args.durability)
            _print_message(session) if args.json else print(session.id)
        elif cmd == "get":
            _print_message(client.get_session(args.session_id))
        elif cmd == "list":
            for session in client.iter_sessions(label_filter=_labels(args.label)):
                _print_message(session) if args.json else print(_session_line(session))
        elif cmd == "delete":
            client.delete_session(args.session_id, expected_state_version=args.expected_version)
        elif cmd == "fork":
            session = client.fork_session(args.session_id,
                                          expected_state_version=args.expected_version,
                                          labels=_labels(args.label) or None)
            _print_message(session) if args.json else print(session.id)
        elif cmd == "export":
            data = client.export_session(args.session_id,
                                         expected_state_version=args.expected_version)
            with open(args.file, "wb") as f:
                f.write(data)
            print(f"wrote {len(data)} bytes to {args.file}", file=sys.stderr)
        elif cmd == "import":
            def pieces():
                with open(args.file, "rb") as f:
                    while piece := f.read(1 << 20):
                        yield piece
            session = client.import_session(pieces(), model=args.model, session_id=args.session,
                                            expected_state_version=args.expected_version,
                                            labels=_labels(args.label) or None,
                                            durability=args.durability)
            _print_message(session) if args.json else print(session.id)
        elif cmd == "ingest":
            final = client.ingest_file(args.session_id, args.file, chunk_bytes=args.chunk_bytes,
                                       progress=not args.no_progress,
                                       expected_state_version=args.expected_version)
            if args.json:
                _print_message(final)
            else:
                print(f"ingested {final.tokens_ingested} tokens, "
                      f"{final.segments_processed} segments, {final.pending_tokens} pending, "
                      f"version {final.state_version}", file=sys.stderr)
        elif cmd == "generate":
            return _generate(client, args)
        elif cmd == "score":
            return _score(client, args)
        elif cmd == "encode":
            return _encode(client, args)
        elif cmd == "tokenize":
            print(" ".join(str(i) for i in client.tokenize(args.text, model=args.model)))
        elif cmd == "detokenize":
            print(client.detokenize(args.ids, model=args.model))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `mnemo-client` and `python -m mnemo_client`; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "generate" and args.prompt is None and args.prompt_file is None \
            and not args.session:
        build_parser().error("generate without --session needs --prompt or --prompt-file")
    if (args.tls_cert is None) != (args.tls_key is None):
        build_parser().error("--tls-cert and --tls-key go together")
    try:
        return run(args)
    except grpc.RpcError as e:
        from mnemo_client.errors import bad_request_violations
        code = e.code() if hasattr(e, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        print(f"error: {name}: {e.details() if hasattr(e, 'details') else e}", file=sys.stderr)
        try:
            for field, description in bad_request_violations(e):
                print(f"  {field}: {description}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - undecodable details must not hide the status
            pass
        return 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
