"""Prepared data on disk: tokenized examples as sharded, memory-mapped numpy arrays.

A prepared data folder is written once by the launcher, published to the durable store under
its key, and opened by every worker (fetched to node scratch first when the store is S3):

    manifest.json      DataManifest: counts, vocab, pad id, the source's identity, and the size
                       and sha256 of every other file. Written LAST: no manifest, no data.
    examples.npy       int64 [n, 3]: (shard, start, length) of every distinct example
    weights.npy        float32 [n]: the mixture weight of each example's source
    ids-00000.npy      int32 token ids of the examples in shard 0, back to back
    mask-00000.npy     uint8, 1 where the token is a training target (label = id), else 0 (-100)
    train.npy, eval.npy  int64 indices into examples.npy (train repeats examples by mixture weight)
    groups.npy         preference data only: int64 [n], the ranked group of every example
    answers.json       prompt data only: the answer of every group (a JSON list of strings)
    tokenizer/         the tokenizer (save_pretrained)

Nothing is a pickle: a prepared folder in a shared bucket cannot run code on the workers that
read it. Arrays are memory-mapped, so a worker holds only the examples it touches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, overload

import numpy as np

from orchestrator.data.templates import IGNORE_INDEX, Example

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer"
GROUPS = "groups.npy"
ANSWERS = "answers.json"
SHARD_TOKENS = 1 << 26  # 64M tokens (256 MB of int32) per shard


class BadPreparedData(ValueError):
    """A prepared data folder that is incomplete, corrupted or of another format version."""


@dataclass
class DataManifest:
    key: str
    vocab_size: int
    pad_id: int
    num_rows: int
    skipped_rows: int
    num_train: int
    num_eval: int
    train_tokens: int
    format_version: int = FORMAT_VERSION
    identity: dict[str, Any] = field(default_factory=dict)
    """What the data was built from (config, source files with size/mtime/ETag, tokenizer)."""
    text_sources: list[str] | None = None
    """data.format text: the stable names of the files the workers stream (relative paths or
    s3:// URLs), in order; None for instruction data."""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{relative path: {bytes, sha256}} of every file but the manifest."""
    train_length_counts: list[list[int]] = field(default_factory=list)
    """[[length, count], ...] of the training examples: the measured length distribution the
    cost estimator plans batches over (cost/lengths.py)."""

    def train_lengths(self) -> list[int]:
        """Every training example's length (from the counts), sorted."""
        return [n for n, c in self.train_length_counts for _ in range(c)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataManifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise BadPreparedData("manifest.json is not a JSON object")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise BadPreparedData(f"manifest.json: {e}") from None


class ExampleSet(Sequence[Example]):
    """Examples read lazily from the memory-mapped shards (a list-like of Example)."""

    def __init__(
        self, table: np.ndarray, weights: np.ndarray, index: np.ndarray, ids: list, mask: list
    ) -> None:
        self._table, self._weights, self._index = table, weights, index
        self._ids, self._mask = ids, mask

    def __len__(self) -> int:
        return len(self._index)

    def _one(self, i: int) -> Example:
        row = int(self._index[i])
        shard, start, n = (int(x) for x in self._table[row])
        ids = self._ids[shard][start : start + n].tolist()
        mask = self._mask[shard][start : start + n]
        labels = np.where(mask.astype(bool), ids, IGNORE_INDEX).tolist()
        return Example(input_ids=ids, labels=labels, weight=float(self._weights[row]))

    @overload
    def __getitem__(self, i: int) -> Example: ...

    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._one(i)

    def __iter__(self) -> Iterator[Example]:
        return (self._one(i) for i in range(len(self)))

    def rows(self) -> np.ndarray:
        """The example rows (of examples.npy) this set reads, in order."""
        return np.asarray(self._index)

    def lengths(self) -> np.ndarray:
        return self._table[self._index, 2] if len(self) else np.zeros(0, dtype=np.int64)

    @property
    def tokens(self) -> int:
        return int(self.lengths().sum())


@dataclass
class PreparedData:
    manifest: DataManifest
    train: ExampleSet
    eval: ExampleSet
    tokenizer_dir: str
    groups: np.ndarray | None = None
    """Preference data: the group id of every example row (see write_prepared)."""
    answers: list[str] | None = None
    """Prompt data: the answer of every group id (what a verifiable reward checks)."""

    @property
    def key(self) -> str:
        """What the data was prepared from (the manifest's key): caches of it are keyed by it."""
        return self.manifest.key

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def pad_id(self) -> int:
        return self.manifest.pad_id

    @property
    def num_rows(self) -> int:
        return self.manifest.num_rows

    @property
    def skipped_rows(self) -> int:
        return self.manifest.skipped_rows

    @property
    def train_tokens(self) -> int:
        return self.manifest.train_tokens

    @property
    def text_sources(self) -> list[str] | None:
        return self.manifest.text_sources


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def write_prepared(
    folder: Path,
    *,
    key: str,
    examples: list[Example],
    train_index: list[int],
    eval_index: list[int],
    tokenizer_dir: Path,
    vocab_size: int,
    pad_id: int,
    num_rows: int,
    skipped_rows: int,
    identity: dict[str, Any],
    text_sources: list[str] | None = None,
    groups: list[int] | None = None,
    answers: list[str] | None = None,
) -> DataManifest:
    """Write a prepared data folder (manifest last) into `folder` (new or empty). `groups`
    (preference data): the group id of every example; a group's replies are consecutive
    examples, best first."""
    folder.mkdir(parents=True, exist_ok=True)
    if groups is not None:
        np.save(folder / GROUPS, np.asarray(groups, dtype=np.int64))
    if answers is not None:
        (folder / ANSWERS).write_text(json.dumps(answers))
    table = _write_shards(folder, examples)
    np.save(folder / "examples.npy", table)
    np.save(folder / "weights.npy", np.asarray([e.weight for e in examples], dtype=np.float32))
    np.save(folder / "train.npy", np.asarray(train_index, dtype=np.int64))
    np.save(folder / "eval.npy", np.asarray(eval_index, dtype=np.int64))
    shutil.copytree(tokenizer_dir, folder / TOKENIZER)
    train_lengths = table[np.asarray(train_index, dtype=np.int64), 2]
    counts = np.unique(train_lengths, return_counts=True)
    manifest = DataManifest(
        key=key,
        vocab_size=vocab_size,
        pad_id=pad_id,
        num_rows=num_rows,
        skipped_rows=skipped_rows,
        num_train=len(train_index),
        num_eval=len(eval_index),
        train_tokens=int(train_lengths.sum()),
        identity=identity,
        text_sources=text_sources,
        train_length_counts=[[int(n), int(c)] for n, c in zip(*counts, strict=True)],
        files={
            str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        },
    )
    (folder / MANIFEST).write_text(manifest.to_json())
    return manifest


def _write_shards(folder: Path, examples: list[Example]) -> np.ndarray:
    """The examples' token ids and loss masks, concatenated into shards of about SHARD_TOKENS
    (ids-NNNNN.npy, mask-NNNNN.npy); returns the table of (shard, offset, length) per
    example."""
    table = np.zeros((len(examples), 3), dtype=np.int64)
    shards: list[tuple[list, list]] = [([], [])]
    at = 0
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        if len(e.labels) != n:
            raise ValueError(f"example {i}: {n} ids but {len(e.labels)} labels")
        if at and at + n > SHARD_TOKENS:
            shards.append(([], []))
            at = 0
        ids, mask = shards[-1]
        ids.append(np.asarray(e.input_ids, dtype=np.int32))
        m = np.asarray([lab != IGNORE_INDEX for lab in e.labels], dtype=np.uint8)
        trained = np.asarray(e.labels)[m.astype(bool)]
        if not np.array_equal(trained, np.asarray(e.input_ids)[m.astype(bool)]):
            raise ValueError(f"example {i}: a label that is neither its token id nor -100")
        mask.append(m)
        table[i] = (len(shards) - 1, at, n)
        at += n
    for s, (ids, mask) in enumerate(shards):
        np.save(folder / f"ids-{s:05d}.npy", np.concatenate(ids) if ids else np.zeros(0, np.int32))
        np.save(
            folder / f"mask-{s:05d}.npy", np.concatenate(mask) if mask else np.zeros(0, np.uint8)
        )
    return table


def read_manifest(folder: Path) -> DataManifest:
    path = folder / MANIFEST
    if not path.exists():
        raise BadPreparedData(f"{folder}: no {MANIFEST} (preparation never finished)")
    try:
        manifest = DataManifest.from_json(path.read_text())
    except json.JSONDecodeError as e:
        raise BadPreparedData(f"{path}: unreadable ({e.msg})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise BadPreparedData(
            f"{folder}: format version {manifest.format_version}, this code reads {FORMAT_VERSION}"
        )
    return manifest


def verify(folder: Path, manifest: DataManifest, hashes: bool) -> None:
    """Every listed file exists with its size (and sha256 when `hashes`).

    Raises:
        BadPreparedData: naming the first file that does not match.
    """
    for rel, meta in manifest.files.items():
        path = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute() or not path.is_file():
            raise BadPreparedData(f"{folder}: {rel} is missing")
        if path.stat().st_size != meta["bytes"]:
            raise BadPreparedData(f"{folder}: {rel} has the wrong size")
        if hashes and sha256_file(path) != meta["sha256"]:
            raise BadPreparedData(f"{folder}: {rel} does not match its sha256")


def open_prepared(folder: Path, verify_hashes: bool = False) -> PreparedData:
    """Memory-map a prepared data folder."""
    manifest = read_manifest(folder)
    verify(folder, manifest, verify_hashes)
    table = np.load(folder / "examples.npy")
    weights = np.load(folder / "weights.npy")
    n_shards = int(table[:, 0].max()) + 1 if len(table) else 1
    ids = [np.load(folder / f"ids-{s:05d}.npy", mmap_mode="r") for s in range(n_shards)]
    mask = [np.load(folder / f"mask-{s:05d}.npy", mmap_mode="r") for s in range(n_shards)]
    train = ExampleSet(table, weights, np.load(folder / "train.npy"), ids, mask)
    evals = ExampleSet(table, weights, np.load(folder / "eval.npy"), ids, mask)
    groups = np.load(folder / GROUPS) if (folder / GROUPS).exists() else None
    answers = _answers(folder, groups) if (folder / ANSWERS).exists() else None
    return PreparedData(manifest, train, evals, str(folder / TOKENIZER), groups, answers)


def _answers(folder: Path, groups: np.ndarray | None) -> list[str]:
    """answers.json: a list of strings, one per group id (it is data: checked, never run)."""
    path = folder / ANSWERS
    try:
        answers = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadPreparedData(f"{path}: unreadable ({e})") from None
    n_groups = int(groups.max()) + 1 if groups is not None and len(groups) else 0
    if (
        not isinstance(answers, list)
        or not all(isinstance(a, str) for a in answers)
        or len(answers) != n_groups
    ):
        raise BadPreparedData(f"{path}: must be a list of {n_groups} strings (one per group)")
    return answers
