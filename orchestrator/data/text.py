"""Pretraining text: documents -> tokens -> fixed-length packed sequences, streamed, resumable.

Sources (`data.source`, format text):
- local files: a file, a folder (every file under it) or a glob (`**` recurses). `{python_stdlib}`
  expands to this Python's standard-library folder: real text (code and docstrings) present on
  every machine, which the local Cerebras-GPT run trains on. `data.exclude` drops files by glob.
  .jsonl/.json files hold one document per line (`data.text_field`); any other file is one
  document.
- `s3://bucket/key.jsonl`: fetched once through the S3 store's retries, cached by ETag, then
  read like a local file.
- a Hugging Face dataset id: `datasets.load_dataset(..., streaming=True)`; its position is the
  dataset's own `state_dict()`.

Documents are tokenized one at a time, an EOS is appended to each, and the token stream is cut
into rows of `max_seq_len` (GPT-style packing: a row may hold the end of one document and the
start of the next; the loss runs over every position). Nothing holds the corpus in memory.
`TextStream.state_dict()` is the exact read position (file, byte offset, leftover tokens), so a
resumed run continues with the very next row. Documents are split into train and held-out by a
hash of their name, so the split does not depend on how much is read.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from orchestrator.config.schema import DataConfig
from orchestrator.data.formats import DataError, fetch_s3_source
from orchestrator.data.tokenizer import load_or_train_tokenizer
from orchestrator.paths import REPO_ROOT
from orchestrator.urls import is_object_store

LINE_FORMATS = (".jsonl", ".json")
EVAL_BUCKETS = 10_000
STREAM_RETRIES = 6
"""Consecutive transient failures of a streamed (Hub) source before the run fails."""


def stream_backoff_s(failures: int) -> float:
    """Pure: the wait before retry `failures` of a stream (1, 2, 4, ... capped at 60 s)."""
    return float(min(60.0, 2.0 ** (failures - 1)))


def is_transient(e: BaseException) -> bool:
    """Pure: a network hiccup worth retrying (connection reset, timeout, 5xx), not a bad row or
    a missing dataset."""
    if isinstance(e, DataError | KeyError | ValueError | TypeError | FileNotFoundError):
        return False
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"ConnectionError", "Timeout", "ReadTimeout", "ChunkedEncodingError",
                "ClientConnectionError", "ServerDisconnectedError", "IncompleteRead"}:  # fmt: skip
        return True
    status = getattr(getattr(e, "response", None), "status_code", None)
    return isinstance(status, int) and (status >= 500 or status == 429)


def _stdlib(pattern: str) -> str:
    return pattern.replace("{python_stdlib}", sysconfig.get_paths()["stdlib"])


def expand_source(source: str) -> str:
    """`{python_stdlib}` -> this Python's standard library; paths relative to the repo root
    (shipped samples) when they do not exist relative to the working directory."""
    s = _stdlib(source)
    if not s.startswith(("/", "s3://")) and not Path(s).exists():
        head = s.split("*")[0]
        if head and (REPO_ROOT / head).exists():
            s = str(REPO_ROOT / s)
    return s


def is_local(source: str) -> bool:
    s = expand_source(source)
    return s.startswith("/") or any(c in s for c in "*?[") or Path(s).exists()


def is_files(source: str) -> bool:
    """Local files or s3:// objects (else a Hugging Face dataset id)."""
    return is_object_store(source) or is_local(source)


@dataclass(frozen=True)
class TextFile:
    """One file of a text source. `name` is the same on every node (the path relative to the
    source's root, or the s3:// URL): it names documents for the held-out split and in errors.
    `location` is where this node reads it (an s3:// URL is fetched to the node's cache)."""

    name: str
    location: str

    def local(self) -> str:
        if is_object_store(self.location):
            return str(fetch_s3_source(self.location))
        return self.location


def _root(src: str) -> Path:
    return Path(src.split("*")[0].split("?")[0].split("[")[0]).parent


def resolve_files(source: str, exclude: list[str] | None = None) -> list[TextFile]:
    """The sorted files of a local/S3 text source (a file, a folder or a glob), minus `exclude`.
    S3 objects are listed, not fetched.

    Raises:
        DataError: nothing matches (names the pattern).
    """
    src = expand_source(source)
    if is_object_store(src):
        return [TextFile(u, u) for u in _list_s3(src, exclude)]
    p = Path(src)
    if p.is_dir():
        files = [str(f) for f in sorted(p.rglob("*")) if f.is_file()]
    elif p.is_file():
        files = [str(p)]
    else:
        files = sorted(f for f in glob.glob(src, recursive=True) if Path(f).is_file())
    pats = [_stdlib(e) for e in exclude or []]
    files = [f for f in files if not any(fnmatch(f, e) for e in pats)]
    if not files:
        raise DataError(f"data.source={source!r} ({src}): no files match")
    root = _root(src)
    if not p.is_file():  # a folder or a glob: nothing it lists may lead outside it
        head = src.split("*")[0].split("?")[0].split("[")[0]
        top = p if p.is_dir() else (Path(head) if head.endswith("/") else Path(head).parent)
        inside = os.path.realpath(top)
        for f in files:
            real = os.path.realpath(f)
            if os.path.commonpath([inside, real]) != inside:
                raise DataError(
                    f"data.source={source!r}: {f} is a link to {real}, outside the corpus "
                    f"folder {top}: copy the file in, or point data.source at it"
                )
    out = []
    for f in files:
        try:
            name = str(Path(f).relative_to(root))
        except ValueError:
            name = f
        out.append(TextFile(name, f))
    return out


def _list_s3(url: str, exclude: list[str] | None) -> list[str]:
    """An s3:// object, or every object matching a glob (s3://bucket/prefix/*.jsonl)."""
    from orchestrator.storage.s3 import S3, split_url

    if not any(c in url for c in "*?["):
        urls = [url]
    else:
        bucket, pattern = split_url(url)
        prefix = pattern.split("*")[0].split("?")[0].split("[")[0]
        try:
            keys = S3().list(bucket, prefix)
        except Exception as e:  # noqa: BLE001 - named in the error
            raise DataError(f"data.source={url!r}: cannot list the objects ({e})") from None
        urls = [f"s3://{bucket}/{k}" for k in keys if fnmatch(k, pattern)]
    urls = sorted(u for u in urls if not any(fnmatch(u, e) for e in exclude or []))
    if not urls:
        raise DataError(f"data.source={url!r}: no objects match")
    return urls


def is_eval(key: str, eval_fraction: float) -> bool:
    return zlib.crc32(key.encode()) % EVAL_BUCKETS < eval_fraction * EVAL_BUCKETS


@dataclass
class Position:
    """Where the next document starts (and what is already tokenized but not yet emitted)."""

    file: int = 0
    offset: int = 0
    """Byte offset in a .jsonl file (whole-file documents: 0 = not read yet)."""
    epoch: int = 0
    buffer: list[int] = field(default_factory=list)
    sequences: int = 0
    documents: int = 0
    hf_rows: int = 0
    """Dataset-id sources: rows read in this pass (names documents for the held-out split)."""
    hf_state: dict[str, Any] | None = None


class TextStream:
    """Packed rows of `seq_len` tokens from one split ("train" or "eval") of a text source.

    Deterministic: the same source, tokenizer and position give the same rows. When the
    training split runs out it starts over (`epoch` counts the passes); the eval split stops.
    """

    def __init__(
        self, cfg: DataConfig, tokenizer, split: str = "train", files: list[TextFile] | None = None
    ):
        self.cfg = cfg
        self.tok = tokenizer
        self.split = split
        self.seq_len = cfg.max_seq_len
        self.eos = tokenizer.eos_token_id
        self.hf = not is_files(cfg.source)
        self.files = [] if self.hf else (files or resolve_files(cfg.source, cfg.exclude))
        self.pos = Position()
        self._hf_iter = None

    # -- position
    def state_dict(self) -> dict[str, Any]:
        d = dict(self.pos.__dict__)
        d["buffer"] = list(self.pos.buffer)
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos = Position(**{**state, "buffer": list(state.get("buffer", []))})
        self._hf_iter = None

    # -- documents
    def _wanted(self, key: str) -> bool:
        return is_eval(key, self.cfg.eval_fraction) == (self.split == "eval")

    def _documents(self) -> Iterator[str]:
        """Documents of this split from the current position on, advancing the position."""
        if self.hf:
            yield from self._hf_documents()
            return
        while True:
            found = False
            while self.pos.file < len(self.files):
                file = self.files[self.pos.file]
                name = file.name
                if name.endswith(LINE_FORMATS):
                    for text in self._line_documents(file.local(), name):
                        found = True
                        yield text
                elif self.pos.offset == 0:
                    self.pos.offset = -1  # read
                    if self._wanted(name):
                        try:
                            text = Path(file.local()).read_text(encoding="utf-8", errors="replace")
                        except OSError as e:
                            raise DataError(f"{name}: cannot read: {e}") from e
                        found = True
                        yield text
                self.pos.file, self.pos.offset = self.pos.file + 1, 0
            if self.split == "eval":
                return
            if not found:
                raise DataError(
                    f"data.source={self.cfg.source!r}: no {self.split} documents in "
                    f"{len(self.files)} files (data.eval_fraction={self.cfg.eval_fraction})"
                )
            self.pos.file, self.pos.offset = 0, 0
            self.pos.epoch += 1

    def _line_documents(self, path: str, name: str) -> Iterator[str]:
        field_name = self.cfg.text_field
        with open(path, "rb") as f:
            f.seek(max(0, self.pos.offset))
            while True:
                start = f.tell()
                line = f.readline()
                if not line:
                    return
                self.pos.offset = f.tell()
                if not line.strip():
                    continue
                # Every line is checked, held-out or not, so a bad row fails in either split.
                shown = name
                try:
                    row = json.loads(line)
                    text = row[field_name]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(
                        f"{shown}:{_line_number(path, start)}: not a JSON object with a string "
                        f"field {field_name!r} (data.text_field): {e!r}"
                    ) from None
                if not isinstance(text, str):
                    raise DataError(
                        f"{shown}:{_line_number(path, start)}: field {field_name!r} "
                        f"(data.text_field) must be a string, got {type(text).__name__}"
                    )
                if self._wanted(f"{name}@{start}"):
                    yield text

    def _hf_documents(self) -> Iterator[str]:
        import datasets

        failures = 0
        while True:
            if self._hf_iter is None:
                ds = datasets.load_dataset(self.cfg.source, split=self.cfg.split, streaming=True)
                if self.pos.hf_state is not None:
                    ds.load_state_dict(self.pos.hf_state)
                self._hf_ds, self._hf_iter = ds, iter(ds)
            try:
                row = next(self._hf_iter)
                failures = 0
            except StopIteration:
                row = None
            except Exception as e:  # noqa: BLE001 - transient ones retried, others raised
                failures += 1
                if not is_transient(e) or failures > STREAM_RETRIES:
                    raise DataError(
                        f"{self.cfg.source}: reading the stream failed after {failures} "
                        f"tries at row {self.pos.hf_rows}: {type(e).__name__}: {e}"
                    ) from e
                import time

                time.sleep(stream_backoff_s(failures))
                self._hf_iter = None  # reopen at the last row read (hf_state)
                continue
            if row is None:  # the end of a pass
                if self.split == "eval":
                    return
                self.pos.epoch += 1
                self.pos.hf_state, self.pos.hf_rows, self._hf_iter = None, 0, None
                continue
            index, self.pos.hf_rows = self.pos.hf_rows, self.pos.hf_rows + 1
            self.pos.hf_state = self._hf_ds.state_dict()  # = after this row
            if self._wanted(f"{self.cfg.source}#{index}"):
                text = row.get(self.cfg.text_field)
                if not isinstance(text, str):
                    raise DataError(
                        f"{self.cfg.source} row {index}: field {self.cfg.text_field!r} "
                        f"(data.text_field) must be a string, got {type(text).__name__}"
                    )
                yield text

    def documents_once(self) -> Iterator[str]:
        """The documents of one pass from the current position (no wrap-around)."""
        epoch = self.pos.epoch
        for text in self._documents():
            if self.pos.epoch != epoch:
                return
            yield text

    # -- rows
    def sequences(self) -> Iterator[list[int]]:
        """Rows of exactly `seq_len` tokens; the position is exact after every yield."""
        n = self.seq_len
        docs = self._documents()
        while True:
            while len(self.pos.buffer) < n:
                try:
                    text = next(docs)
                except StopIteration:
                    return
                self.pos.documents += 1
                ids = self.tok(text, add_special_tokens=False)["input_ids"]
                self.pos.buffer.extend(ids + [self.eos])
            row, self.pos.buffer = self.pos.buffer[:n], self.pos.buffer[n:]
            self.pos.sequences += 1
            yield row

    def take(self, k: int) -> list[list[int]]:
        out = []
        for row in self.sequences():
            out.append(row)
            if len(out) == k:
                break
        return out


def _line_number(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def training_texts(cfg: DataConfig, files: list[TextFile], limit_bytes: int) -> Iterator[str]:
    """The first `limit_bytes` of training text, for a local BPE."""

    class _Raw:  # a tokenizer stand-in: the stream is only used for its documents here
        eos_token_id = 0

    stream = TextStream(cfg, _Raw(), "train", files)
    seen = 0
    for text in stream.documents_once():
        if seen >= limit_bytes:
            return
        text = text[: limit_bytes - seen]
        seen += len(text.encode())
        yield text


def build_text_data(cfg: DataConfig, folder: Path, key: str, identity: dict[str, Any]):
    """Driver side, before any cluster: list the files, load or train the tokenizer, and pack
    the held-out rows into a prepared data folder (`prepared.py`). Training rows are streamed
    by the workers (`TextStepBatches`), which list the same files by the same stable names."""
    import tempfile

    from orchestrator.data.prepared import write_prepared
    from orchestrator.data.templates import Example

    files = resolve_files(cfg.source, cfg.exclude) if is_files(cfg.source) else []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        tokenizer, tok_dir = load_or_train_tokenizer(
            tok_dir,
            cfg.tokenizer,
            cfg.tokenizer_vocab_size,
            texts=lambda: training_texts(cfg, files, cfg.tokenizer_train_bytes),
        )
        held_out = TextStream(cfg, tokenizer, "eval", files).take(cfg.eval_sequences)
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        examples = [Example(input_ids=r, labels=list(r)) for r in held_out]
        return write_prepared(
            folder,
            key=key,
            examples=examples,
            train_index=[],
            eval_index=list(range(len(examples))),
            tokenizer_dir=tok_dir,
            vocab_size=len(tokenizer),
            pad_id=int(pad),
            num_rows=len(files),
            skipped_rows=0,
            identity=identity,
            text_sources=[f.name for f in files],
        )


def worker_files(cfg: DataConfig, names: list[str] | None) -> list[TextFile]:
    """The text source's files as this node sees them, checked against the names the launcher
    prepared with (a corpus that differs here would silently change the held-out split).

    Raises:
        DataError: the files differ, naming the first difference and the fix.
    """
    if not is_files(cfg.source):
        return []
    files = resolve_files(cfg.source, cfg.exclude)
    mine = [f.name for f in files]
    if names is not None and mine != list(names):
        missing = sorted(set(names) - set(mine))[:3]
        extra = sorted(set(mine) - set(names))[:3]
        raise DataError(
            f"data.source={cfg.source!r} lists {len(mine)} files on this node but "
            f"{len(names)} where the launcher prepared the data (missing here: {missing}, "
            f"extra: {extra}): a corpus must be the same on every node; put it on s3:// or "
            "a folder every node mounts"
        )
    return files


def all_gather_exchange(mine: Any) -> list[Any]:
    """Every rank's `mine`, in rank order (torch.distributed; a world of one without it)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


class TextStepBatches:
    """The batches of a pretraining run, for one rank: step s takes the next
    `global_batch_size` packed rows of the stream; rank r trains rows r, r + world, ...

    The rows are the stream's (`TextStream.sequences`: documents in order, EOS-separated,
    packed), so they depend only on the source, the tokenizer and the step, never on the worker
    count, and a checkpoint taken by W workers resumes on any other number. Tokenizing is what
    costs, so it is shared: documents are read by every rank (text only), and document i of a
    round is tokenized by rank i mod W only; the ranks then exchange the token ids
    (`exchange`, an all-gather), so each rank tokenizes 1/W of the corpus. The next step's
    first round is read and tokenized in a background thread while the current step trains;
    the exchange itself runs on the training thread, in step order, as every collective must.

    Steps must be asked for in order, which is how the loop trains. `state_dict()` after step s
    is where step s + 1 starts (taken before any read-ahead).
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        files: list[TextFile] | None,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        world_size: int,
        rank: int,
        pad_id: int,
        exchange: Any = None,
    ) -> None:
        self.stream = TextStream(cfg, tokenizer, "train", files)
        self.tok = tokenizer
        self.global_batch_size = global_batch_size
        self.micro = micro_batch_size
        self.world = world_size
        self.rank = rank
        self.pad_id = pad_id
        self.seq_len = cfg.max_seq_len
        self.mode = "pad"  # every row is full: no padding, no grouping needed
        self.steps_per_epoch = 1 << 62  # a stream has no fixed epoch length
        self.exchange = exchange or all_gather_exchange
        self.tokenized = 0
        """Documents this rank has tokenized (about 1/world of those read)."""
        self._tokens_per_doc: float | None = None
        self._next_step = 0
        self._cache: dict[int, list] = {}
        self._reset()

    READ_KEYS = ("file", "offset", "epoch", "hf_rows", "hf_state")
    """The reader's part of the position (the rest, the buffer and the counts, is the rows')."""

    def _reader_position(self) -> dict[str, Any]:
        return {k: getattr(self.stream.pos, k) for k in self.READ_KEYS}

    def _reset(self) -> None:
        self._docs = self.stream._documents()
        self._ahead: Any = None  # the read-ahead of the next step's first round
        self._consumed = self._reader_position()  # after the last document in the buffer
        self._snapshot = self.stream.state_dict()

    def _take_snapshot(self) -> None:
        """The position after the rows cut so far: documents read ahead are not in it."""
        self._snapshot = {**self.stream.state_dict(), **self._consumed}

    def state_dict(self) -> dict[str, Any]:
        return {"next_step": self._next_step, "stream": self._snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._join_ahead()
        self.stream.load_state_dict(state["stream"])
        self._next_step = int(state["next_step"])
        self._cache.clear()
        self._reset()

    @property
    def epoch(self) -> int:
        return int(self._snapshot["epoch"])

    # -- rounds: read documents, tokenize this rank's share, exchange
    def _round_size(self) -> int:
        """Documents for the rest of the step (from the mean tokens per document so far),
        a multiple of the world size (every rank gets the same count)."""
        need = self.global_batch_size * self.seq_len - len(self.stream.pos.buffer)
        per_doc = self._tokens_per_doc or float(self.seq_len)
        docs = max(1, -(-max(need, 1) // max(1, int(per_doc))))
        return -(-docs // self.world) * self.world

    def _read_and_tokenize(self, n: int) -> tuple[int, list[list[int]], dict[str, Any]]:
        """Read the next `n` documents (all ranks), tokenize this rank's share. Returns the
        count, this rank's token ids and the reader's position after them."""
        texts = [next(self._docs) for _ in range(n)]
        after = self._reader_position()
        mine = texts[self.rank :: self.world]
        self.tokenized += len(mine)
        ids = self.tok(mine, add_special_tokens=False)["input_ids"] if mine else []
        return n, [list(x) for x in ids], after

    def _join_ahead(self) -> tuple[int, list[list[int]], dict[str, Any]] | None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        thread, box = ahead
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _start_ahead(self) -> None:
        import threading

        if self._ahead is not None:  # the last one is still pending (this step did not need it)
            return
        n = self._round_size()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self._read_and_tokenize(n)
            except BaseException as e:  # noqa: BLE001 - re-raised on the training thread
                box["error"] = e

        thread = threading.Thread(target=work, name="text-read-ahead", daemon=True)
        thread.start()
        self._ahead = (thread, box)

    def _fill(self) -> None:
        """Rounds until the buffer holds the step's rows."""
        need = self.global_batch_size * self.seq_len
        pos = self.stream.pos
        while len(pos.buffer) < need:
            got = self._join_ahead() or self._read_and_tokenize(self._round_size())
            n, mine, self._consumed = got
            parts = self.exchange(mine)
            docs = [parts[i % self.world][i // self.world] for i in range(n)]
            for ids in docs:
                pos.buffer.extend(ids + [self.stream.eos])
            pos.documents += n
            total = sum(len(d) + 1 for d in docs)
            seen = self._tokens_per_doc
            self._tokens_per_doc = total / n if seen is None else 0.8 * seen + 0.2 * total / n

    def global_examples(self, step: int):
        from orchestrator.data.templates import Example

        if step not in self._cache:
            if step != self._next_step:
                raise RuntimeError(
                    f"text batches are streamed in order: asked for step {step}, "
                    f"the stream is at step {self._next_step}"
                )
            self._fill()
            pos, n = self.stream.pos, self.seq_len
            rows = [pos.buffer[i * n : (i + 1) * n] for i in range(self.global_batch_size)]
            del pos.buffer[: self.global_batch_size * n]
            pos.sequences += self.global_batch_size
            self._cache = {s: v for s, v in self._cache.items() if s >= step - 1}
            self._cache[step] = [Example(input_ids=r, labels=r) for r in rows]
            self._next_step += 1
            self._take_snapshot()
            self._start_ahead()
        return self._cache[step]

    def step_targets(self, step: int) -> int:
        """Trained positions of a step (every row is full; its last token predicts nothing)."""
        return self.global_batch_size * (self.seq_len - 1)

    def padded_tokens(self, step: int) -> int:
        return self.global_batch_size * self.seq_len

    def step(self, step: int):
        import torch

        batch = self.global_examples(step)
        mine = batch[self.rank :: self.world]
        tensors = []
        for i in range(0, len(mine), self.micro):
            ids = torch.tensor([e.input_ids for e in mine[i : i + self.micro]])
            tensors.append({"input_ids": ids, "labels": ids.clone()})
        return tensors, self.step_targets(step)
