"""Transformer-XL as published, through the real server: a wt103-shaped checkpoint (wt103's
267,735-word vocabulary, cutoffs 20000/40000/200000, div_val 4 and tied weights and projections;
two narrow layers with random weights), saved by Hugging Face with its TransfoXLTokenizer and
converted by tools/convert_hf_transfo_xl.py, loads in mnemo-server, tokenizes as Hugging Face does
on whitespace-tokenized text, scores with Hugging Face's log-probabilities, and streams a long
document into a session and continues it as Hugging Face continues it with the same memory."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from server_harness import BASE_FLAGS, SEGMENT_TOKENS, ServerProcess

warnings.filterwarnings("ignore", category=FutureWarning)
from transformers import TransfoXLTokenizer  # noqa: E402

from tools import convert_hf_transfo_xl as cv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERTER = os.path.join(ROOT, "tools", "convert_hf_transfo_xl.py")
VOCAB = 267735
WORDS = ("the , . of and in to a was The that for on is as with by he at from his an were "
         "it had which be are this but first also its not after they one two new who or has "
         "been their her game season city year time film would during only used").split()
TOL = 1e-4


def symbols():
    """wt103's size: <eos> and <unk> as the original puts them, common words, then filler."""
    base = ["<eos>", "<unk>"] + WORDS + ["'s", "@-@"]
    return base + [f"w{i}" for i in range(VOCAB - len(base))]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(HF model, HF tokenizer, converted directory)."""
    tmp = tmp_path_factory.mktemp("wt103_shaped")
    vocab_txt = tmp / "vocab.txt"  # the original code's text vocabulary
    vocab_txt.write_text("".join(s + "\n" for s in symbols()), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = TransfoXLTokenizer(vocab_file=str(vocab_txt))
        tokenizer.build_vocab()
    model = cv.random_hf_model(dict(
        vocab_size=VOCAB, cutoffs=[20000, 40000, 200000], div_val=4, d_model=64, d_embed=64,
        n_head=2, d_head=32, d_inner=128, n_layer=2, mem_len=24, clamp_len=0,
        tie_word_embeddings=True, proj_share_all_but_first=True, eos_token_id=0,
        dropout=0.0, dropatt=0.0), seed=21, std=0.1)
    hf_dir, out = tmp / "hf", tmp / "ours"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)  # vocab.pkl
    proc = subprocess.run([sys.executable, CONVERTER, str(hf_dir), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return model, tokenizer, out


@pytest.fixture(scope="module")
def client(published, server_bin, tiny_model, server_workdir):
    server = ServerProcess(server_bin, tiny_model, server_workdir, list(BASE_FLAGS),
                           models=[f"wt103={published[2]}"], grace_s=10.0)
    server.wait_serving()
    c = server.client()
    yield c
    c.close()
    server.stop(check=True)


def lines_of(seed, n_lines, words_per_line):
    """Whitespace-tokenized text: common words, filler words and words not in the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    pool = WORDS + [f"w{i}" for i in (5, 19000, 25000, 39999, 123456, 200001, 267000)]
    pool += ["zebra", "unseen", "Wikipedia"]
    lines = []
    for _ in range(n_lines):
        picks = torch.randint(0, len(pool), (words_per_line,), generator=gen).tolist()
        lines.append(" ".join(pool[p] for p in picks))
    return lines


def hf_logprobs(model, ids, seg_len):
    """HF prediction_scores [len(ids), V], fed in segments of seg_len with memory."""
    rows, mems = [], None
    with torch.no_grad():
        for start in range(0, len(ids), seg_len):
            out = model(input_ids=torch.tensor([ids[start:start + seg_len]]), mems=mems)
            mems = out.mems
            rows.append(out.prediction_scores[0].double())
    return torch.cat(rows)


def test_the_vocabulary_converts_and_tokenizes_as_hugging_face(published, client):
    _, tokenizer, out = published
    with open(out / "vocab.words", encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == symbols()
    lines = lines_of(1, 6, 40)
    expected = []
    for line in lines:
        expected += tokenizer.encode(line) + [tokenizer.convert_tokens_to_ids("<eos>")]
    assert 1 in expected  # <unk> for the unknown words
    # A line break is <eos>, as the original corpus encoding (add_eos) gives.
    assert client.tokenize("\n".join(lines) + "\n", model="wt103") == expected
    # Where Hugging Face's Moses rules split a word of the vocabulary, the word stays whole (as
    # the original corpus encoding keeps it): the documented difference.
    quoted = "the city 's game @-@ season"
    assert tokenizer.tokenize(quoted) != quoted.split()
    assert client.tokenize(quoted, model="wt103") == tokenizer.convert_tokens_to_ids(
        quoted.split())
    assert client.detokenize(expected, model="wt103") == "\n".join(
        line.replace("zebra", "<unk>").replace("unseen", "<unk>").replace("Wikipedia", "<unk>")
        for line in lines) + "\n"


def test_score_matches_hugging_face(published, client):
    model, tokenizer, _ = published
    text = " ".join(lines_of(2, 1, 3 * SEGMENT_TOKENS + 5)[0].split())
    ids = client.tokenize(text, model="wt103")
    assert len(ids) == 3 * SEGMENT_TOKENS + 5
    scored = client.score(text=text, model="wt103")
    assert [t.id for t in scored.tokens] == ids[1:]
    ref = hf_logprobs(model, ids, SEGMENT_TOKENS)
    want = [float(ref[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert [t.logprob for t in scored.tokens] == pytest.approx(want, abs=TOL)


def test_a_long_document_streams_in_and_continues_as_hugging_face(published, client):
    model, _, _ = published
    document = "\n".join(lines_of(3, 40, 24)) + "\n"
    session = client.create_session(model="wt103").id
    final = client.ingest_text(session, document, chunk_bytes=997)
    doc_ids = client.tokenize(document, model="wt103")
    assert final.tokens_ingested == len(doc_ids) > 30 * SEGMENT_TOKENS
    result = client.generate_result(session, model="wt103", max_tokens=12, temperature=0,
                                    ignore_eos=True, logprobs=True)
    assert len(result.ids) == 12
    # Hugging Face fed the same document in the same segments, then the server's tokens one
    # at a time: each server token is HF's greedy choice (to within the tolerance, so a near
    # tie cannot fail the test) with HF's log-probability.
    with torch.no_grad():
        mems = None
        for start in range(0, len(doc_ids), SEGMENT_TOKENS):
            out = model(input_ids=torch.tensor([doc_ids[start:start + SEGMENT_TOKENS]]),
                        mems=mems)
            mems = out.mems
        row = out.prediction_scores[0, -1].double()
        for token, logprob in zip(result.ids, result.logprobs):
            assert float(row[token]) == pytest.approx(float(row.max()), abs=TOL)
            assert logprob.logprob == pytest.approx(float(row[token]), abs=TOL)
            out = model(input_ids=torch.tensor([[token]]), mems=mems)
            mems = out.mems
            row = out.prediction_scores[0, -1].double()
    assert result.text == client.detokenize(result.ids, model="wt103")
    client.delete_session(session)
