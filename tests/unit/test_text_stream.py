"""The pretraining data path: streamed packing with an exact resume position, the document-level
held-out split, bad rows naming their file and line, and step batches over ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config.schema import DataConfig
from orchestrator.data.dataset import prepare_data
from orchestrator.data.formats import DataError
from orchestrator.data.text import (
    TextStepBatches,
    TextStream,
    resolve_files,
    training_texts,
    worker_files,
)
from orchestrator.data.tokenizer import train_bpe

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _doc(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(5 + i % 23)) + f" doc{i}."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two .jsonl files and three .txt files (one document each)."""
    root = tmp_path_factory.mktemp("corpus")
    for f in range(2):
        with open(root / f"part{f}.jsonl", "w") as fh:
            for i in range(60):
                fh.write(json.dumps({"text": _doc(100 * f + i), "meta": i}) + "\n")
    for f in range(3):
        (root / f"note{f}.txt").write_text("\n".join(_doc(500 + 10 * f + i) for i in range(9)))
    return root


@pytest.fixture(scope="module")
def tok(corpus):
    cfg = DataConfig(format="text", source=str(corpus))
    return train_bpe(training_texts(cfg, resolve_files(str(corpus)), 10**6), 320)


def _cfg(corpus: Path, **kw) -> DataConfig:
    return DataConfig(format="text", source=str(corpus), max_seq_len=16, eval_fraction=0.1, **kw)


def test_rows_are_full_and_documents_end_with_eos(corpus, tok):
    rows = TextStream(_cfg(corpus), tok).take(40)
    assert all(len(r) == 16 for r in rows)
    flat = [t for r in rows for t in r]
    assert flat.count(tok.eos_token_id) >= 5


@pytest.mark.parametrize("cut", [1, 7, 33, 90, 170])
def test_interrupted_and_resumed_read_gives_the_same_rows(corpus, tok, cut):
    """Read `cut` rows, keep only the JSON state, resume in a new stream: the rows that follow
    are exactly those of an uninterrupted read (across files and into the second epoch)."""
    whole = TextStream(_cfg(corpus), tok).take(220)
    first = TextStream(_cfg(corpus), tok)
    head = first.take(cut)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = TextStream(_cfg(corpus), tok)
    resumed.load_state_dict(state)
    assert head + resumed.take(220 - cut) == whole
    assert resumed.pos.epoch >= 1  # 220 rows is more than one pass: the stream wrapped


def test_held_out_documents_are_never_trained_on(corpus, tok):
    cfg = _cfg(corpus)
    train = TextStream(cfg, tok, "train")
    held = TextStream(cfg, tok, "eval")
    train_docs = set(train.documents_once())
    eval_docs = set(held.documents_once())
    assert eval_docs and train_docs and not (train_docs & eval_docs)
    assert len(eval_docs) < 0.3 * len(train_docs)


def test_bad_jsonl_row_names_file_line_and_field(tmp_path, tok):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: .*'text' \(data\.text_field\)"):
        TextStream(
            DataConfig(format="text", source=str(p), max_seq_len=4, eval_fraction=0.0), tok
        ).take(50)
    p.write_text('{"text": "fine"}\n{"text": 12}\n')
    with pytest.raises(
        DataError, match=r"c\.jsonl:2: field 'text' \(data\.text_field\) must be a string"
    ):
        TextStream(
            DataConfig(format="text", source=str(p), max_seq_len=4, eval_fraction=0.0), tok
        ).take(50)


def test_no_matching_files_and_no_training_documents(tmp_path, tok):
    with pytest.raises(DataError, match="no files match"):
        resolve_files(str(tmp_path / "*.md"))
    (tmp_path / "a.txt").write_text("x")
    cfg = DataConfig(format="text", source=str(tmp_path / "*.txt"), exclude=["*/a.txt"])
    with pytest.raises(DataError, match="no files match"):
        resolve_files(cfg.source, cfg.exclude)


def test_stdlib_source_resolves_on_any_machine():
    files = resolve_files("{python_stdlib}/*.py", ["*/this.py"])
    assert any(f.location.endswith("/os.py") for f in files) and not any(
        f.location.endswith("/this.py") for f in files
    )
    # names are relative to the source's root: the same on a node whose Python lives elsewhere
    assert all(f.name.startswith("python3") and not f.name.startswith("/") for f in files)


class ThreadWorld:
    """`world` ranks as threads of this process, exchanging through an all-gather built on a
    barrier: the collective TextStepBatches makes, without a process group."""

    def __init__(self, world: int) -> None:
        import threading

        self.world, self.slots = world, [None] * world
        self.barrier = threading.Barrier(world)

    def exchange(self, rank: int):
        def gather(mine):
            self.slots[rank] = mine
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # everyone has read before anyone writes the next round
            return out

        return gather

    def run(self, fn) -> list:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.world) as pool:
            return list(pool.map(fn, range(self.world)))


def _batches(cfg, tok, world, rank, exchange=None, gbs=8):
    return TextStepBatches(cfg, tok, None, global_batch_size=gbs, micro_batch_size=2,
                           world_size=world, rank=rank, pad_id=0, exchange=exchange)  # fmt: skip


def _reference_rows(cfg, tok, steps, gbs=8):
    """The stream's own rows (TextStream.sequences, one process): what any world must train."""
    rows = TextStream(cfg, tok, "train").sequences()
    return [[next(rows) for _ in range(gbs)] for _ in range(steps)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_step_batches_split_rows_over_ranks_and_resume_with_another_world(corpus, tok, world):
    cfg = _cfg(corpus)
    steps = _reference_rows(cfg, tok, 6)
    tw = ThreadWorld(world)

    def rank_main(rank: int):
        b = _batches(cfg, tok, world, rank, tw.exchange(rank))
        for s in range(3):
            mbs, targets = b.step(s)
            mine = [r for mb in mbs for r in mb["input_ids"].tolist()]
            assert mine == steps[s][rank::world] and targets == 8 * 15
        return b.state_dict()

    states = tw.run(rank_main)
    assert all(st == states[0] for st in states)  # one position, the same on every rank
    # a checkpoint taken after step 3 by `world` workers resumes on 1 worker at step 3
    again = _batches(cfg, tok, 1, 0)
    again.load_state_dict(json.loads(json.dumps(states[0])))
    assert [[e.input_ids for e in again.global_examples(s)] for s in range(3, 6)] == steps[3:]
    with pytest.raises(RuntimeError, match="streamed in order"):
        again.global_examples(1)


def test_each_rank_tokenizes_its_share_and_worlds_agree(corpus, tok):
    """World 16: each rank tokenizes ~1/16 of the documents read, and worlds 2 and 4 train the
    same rows as the stream read by one process."""
    cfg = _cfg(corpus)
    calls: dict[int, int] = {}

    class Counting:  # the real tokenizer, counting the documents each rank hands it
        def __init__(self, rank):
            self.rank, self.eos_token_id = rank, tok.eos_token_id

        def __call__(self, texts, **kw):
            calls[self.rank] = calls.get(self.rank, 0) + len(texts)
            return tok(texts, **kw)

    tw = ThreadWorld(16)

    def rank_main(rank: int):
        b = TextStepBatches(cfg, Counting(rank), None, global_batch_size=32, micro_batch_size=2,
                            world_size=16, rank=rank, pad_id=0, exchange=tw.exchange(rank))  # fmt: skip
        rows = [[e.input_ids for e in b.global_examples(s)] for s in range(4)]
        return rows, b.stream.pos.documents

    out = tw.run(rank_main)
    read = out[0][1]
    assert all(rows == out[0][0] for rows, _ in out)
    assert sum(calls.values()) <= read + 16 * 2  # nothing tokenized twice (read-ahead aside)
    assert max(calls.values()) <= read / 16 + 2 * 4  # ~1/16 each (rounds are multiples of 16)
    ref = _reference_rows(cfg, tok, 4, gbs=32)
    assert out[0][0] == ref
    for world in (2, 4):
        tw2 = ThreadWorld(world)

        def main(rank, w=world, t=tw2):
            b = _batches(cfg, tok, w, rank, t.exchange(rank), 32)
            return [[e.input_ids for e in b.global_examples(s)] for s in range(4)]

        assert all(rows == ref for rows in tw2.run(main)), world


def test_stream_retry_policy_is_pure():
    from orchestrator.data.text import is_transient, stream_backoff_s

    assert [stream_backoff_s(k) for k in (1, 2, 3, 8)] == [1.0, 2.0, 4.0, 60.0]
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(DataError("bad row")) and not is_transient(KeyError("text"))

    class HTTPError(Exception):
        def __init__(self, code):
            self.response = type("R", (), {"status_code": code})()

    assert is_transient(HTTPError(503)) and is_transient(HTTPError(429))
    assert not is_transient(HTTPError(404))


def test_prepare_trains_a_tokenizer_and_packs_held_out_rows(corpus, tmp_path):
    cfg = _cfg(corpus, tokenizer_vocab_size=320, eval_sequences=5)
    data = prepare_data(cfg, tmp_path / "data")
    assert len(data.eval) == 5 and all(len(e.input_ids) == 16 for e in data.eval)
    assert len(data.train) == 0 and len(data.text_sources) == 5 and data.vocab_size <= 320
    assert (Path(data.tokenizer_dir) / "tokenizer.json").exists()
    # the names are relative to the corpus root, not this machine's paths
    assert sorted(data.text_sources) == sorted(f"{corpus.name}/{p.name}" for p in corpus.iterdir())
    # prepared once: the same folder opens again without re-reading the corpus
    assert prepare_data(cfg, tmp_path / "data").eval[0].input_ids == data.eval[0].input_ids
    # a node whose corpus differs is refused, naming the difference
    assert [f.name for f in worker_files(cfg, data.text_sources)] == data.text_sources
    with pytest.raises(DataError, match="same on every node"):
        worker_files(cfg, data.text_sources + ["elsewhere.txt"])


def test_hugging_face_streaming_source_resumes_exactly(corpus, tok):
    """The dataset-id path: `datasets` streaming with its own state_dict (here over a local
    folder of .jsonl files, read by the datasets json builder)."""
    folder = corpus.parent / "hf_like"
    folder.mkdir(exist_ok=True)
    for f in corpus.glob("*.jsonl"):
        (folder / f.name).write_text(f.read_text())
    cfg = DataConfig(format="text", source=str(folder), max_seq_len=16, eval_fraction=0.1)

    def stream() -> TextStream:
        s = TextStream(cfg, tok)
        s.hf, s.files = True, []
        return s

    whole = stream().take(60)
    first = stream()
    head = first.take(23)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = stream()
    resumed.load_state_dict(state)
    assert head + resumed.take(37) == whole


def test_a_corpus_file_linking_outside_the_corpus_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("fine")
    (tmp_path / "private.txt").write_text("not part of the corpus")
    (corpus / "inner.txt").symlink_to(corpus / "a.txt")  # inside: fine
    assert len(resolve_files(str(corpus))) == 2
    (corpus / "leak.txt").symlink_to(tmp_path / "private.txt")
    with pytest.raises(DataError, match=r"leak.txt is a link to .*private.txt, outside the corpus"):
        resolve_files(str(corpus))
    with pytest.raises(DataError, match="outside the corpus"):
        resolve_files(str(corpus / "*.txt"))
