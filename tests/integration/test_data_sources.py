"""Data from s3:// (a real moto_server HTTP endpoint): JSONL and parquet objects are fetched once,
train like local files, and a bad row is named by its s3:// URL and line."""

from __future__ import annotations

import json

import pytest

from orchestrator.config.schema import DataConfig
from orchestrator.data.dataset import prepare_data
from orchestrator.data.formats import DataError

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(start_moto, monkeypatch, tmp_path):
    import boto3

    url, _ = start_moto()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))
    client = boto3.client("s3")
    client.create_bucket(Bucket="data")
    return client


ROWS = [{"prompt": f"Say {i}.", "response": f"{i}.", "source": "s"} for i in range(40)]


def test_jsonl_and_parquet_from_s3(bucket, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket.put_object(
        Bucket="data", Key="g/rows.jsonl", Body="".join(json.dumps(r) + "\n" for r in ROWS)
    )
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    bucket.upload_file(str(tmp_path / "rows.parquet"), "data", "g/rows.parquet")
    for key in ("g/rows.jsonl", "g/rows.parquet"):
        cfg = DataConfig(format="gpt4all", source=f"s3://data/{key}", template="gpt4all")
        data = prepare_data(cfg, tmp_path / key.replace("/", "_"))
        assert len(data.train) + len(data.eval) == 40
    # Fetched once, keyed by ETag: a changed object is fetched again.
    assert len(list((tmp_path / "cache/s3/data/g").glob("rows.jsonl.*"))) == 1
    bucket.put_object(Bucket="data", Key="g/rows.jsonl", Body=json.dumps(ROWS[0]) + "\n{oops\n")
    cfg = DataConfig(format="gpt4all", source="s3://data/g/rows.jsonl", template="gpt4all")
    with pytest.raises(DataError, match=r"s3://data/g/rows.jsonl line 2 column 2: not valid JSON"):
        prepare_data(cfg, tmp_path / "bad")


def test_missing_s3_object_is_a_clear_error(bucket, tmp_path):
    cfg = DataConfig(format="gpt4all", source="s3://data/nope.jsonl", template="gpt4all")
    with pytest.raises(DataError, match=r"data.source='s3://data/nope.jsonl': cannot read"):
        prepare_data(cfg, tmp_path / "x")


def test_pretraining_text_shards_from_s3(bucket, tmp_path):
    """format text over s3://bucket/prefix/*.jsonl: every matching shard is fetched (once) and
    streamed; a bad line is named by its s3:// URL and line."""
    from orchestrator.data.text import TextStream, worker_files

    for shard in range(3):
        body = "".join(
            json.dumps({"text": f"shard {shard} document {i}: " + "words " * (i % 9)}) + "\n"
            for i in range(30)
        )
        bucket.put_object(Bucket="data", Key=f"corpus/part-{shard}.jsonl", Body=body)
    bucket.put_object(Bucket="data", Key="corpus/README.md", Body="not a shard")
    cfg = DataConfig(format="text", source="s3://data/corpus/*.jsonl", max_seq_len=8,
                     tokenizer_vocab_size=300, eval_fraction=0.1, eval_sequences=4)  # fmt: skip
    data = prepare_data(cfg, tmp_path / "text")
    assert data.text_sources == [f"s3://data/corpus/part-{i}.jsonl" for i in range(3)]
    assert len(data.eval) == 4
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    rows = TextStream(cfg, tok, "train", worker_files(cfg, data.text_sources)).take(40)
    assert len(rows) == 40 and all(len(r) == 8 for r in rows)

    bucket.put_object(Bucket="data", Key="corpus/part-1.jsonl", Body='{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(DataError, match=r"s3://data/corpus/part-1.jsonl:2: "):
        s = TextStream(cfg, tok, "train")
        s.take(10_000)


SPLIT_SCRIPT = """
import json, sys
from orchestrator.config.schema import DataConfig
from orchestrator.data.text import TextStream, worker_files
cfg = DataConfig(**json.loads(sys.argv[1]))

class Raw:
    eos_token_id = 0

out = {}
for split in ("train", "eval"):
    s = TextStream(cfg, Raw(), split, worker_files(cfg, json.loads(sys.argv[2])))
    out[split] = sorted(s.documents_once())
print(json.dumps(out))
"""


def test_held_out_split_of_s3_shards_is_the_same_in_a_fresh_process(bucket, tmp_path):
    """A worker is a fresh process on another node: it must put the same documents in the
    held-out split as the launcher did (the split hashes each document's stable name: its s3://
    URL, never a node's cache path). Computed here and in a new interpreter with its own cache."""
    import os
    import subprocess
    import sys

    from orchestrator.data.text import TextStream, worker_files

    for shard in range(3):
        body = "".join(json.dumps({"text": f"s{shard} doc {i}"}) + "\n" for i in range(40))
        bucket.put_object(Bucket="data", Key=f"split/part-{shard}.jsonl", Body=body)
    spec = {"format": "text", "source": "s3://data/split/*.jsonl", "eval_fraction": 0.2,
            "max_seq_len": 8}  # fmt: skip
    cfg = DataConfig(**spec)
    names = [f.name for f in worker_files(cfg, None)]

    class Raw:
        eos_token_id = 0

    here = {
        split: sorted(TextStream(cfg, Raw(), split, worker_files(cfg, names)).documents_once())
        for split in ("train", "eval")
    }
    env = {**os.environ, "ORCHESTRATOR_CACHE": str(tmp_path / "other-node-cache")}
    out = subprocess.run(
        [sys.executable, "-c", SPLIT_SCRIPT, json.dumps(spec), json.dumps(names)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert here == there
    assert here["eval"] and not set(here["eval"]) & set(here["train"])
    assert len(here["eval"]) + len(here["train"]) == 120
