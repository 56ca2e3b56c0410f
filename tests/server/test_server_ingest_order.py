"""Ingest keeps a document's order when one stream mixes text and id chunks: text the server
holds back until the next space goes in before a later id chunk (it once committed
"word", [42], "s", [43] as 42 43 words)."""

import pytest


def _ids(client, text):
    return list(client.tokenize(text))


@pytest.mark.parametrize("chunks", [
    ["word", [42], "s", [43]],
    [" In the", [10, 11, 12], " beginning", [13]],
    ["a b", [7], "c d ", [8], [9], "e"],
], ids=["word-42-s-43", "in-the-beginning", "runs"])
def test_mixed_text_and_ids_keep_their_order(shared_client, chunks):
    client = shared_client
    # The same document as ids: each text chunk tokenized up to the next id chunk.
    expected = []
    pending = ""
    for chunk in chunks:
        if isinstance(chunk, str):
            pending += chunk
        else:
            expected += _ids(client, pending) if pending else []
            pending = ""
            expected += chunk
    expected += _ids(client, pending) if pending else []

    mixed = client.create_session()
    plain = client.create_session()
    try:
        client.ingest(mixed.id, chunks)
        client.ingest(plain.id, [expected])
        got, want = client.get_session(mixed.id), client.get_session(plain.id)
        assert got.tokens_seen == want.tokens_seen == len(expected)
        # Same document, same order: the same memory, so the same scores bit for bit.
        probe = [3, 4, 5, 6, 7, 8]
        a = [t.logprob for t in client.score(mixed.id, ids=probe).tokens]
        b = [t.logprob for t in client.score(plain.id, ids=probe).tokens]
        assert a == b, f"mixed stream {chunks} did not keep its order"
    finally:
        client.delete_session(mixed.id)
        client.delete_session(plain.id)
