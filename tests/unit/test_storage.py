"""The storage contract: the durable store API on a folder, where a run's storage resolves to,
what a multi-node cluster refuses, prepared data on disk and its key, the typed records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError, DataConfig, LengthStats
from orchestrator.data.prepared import BadPreparedData, open_prepared, write_prepared
from orchestrator.data.publish import data_key
from orchestrator.data.templates import Example
from orchestrator.storage import resolve
from orchestrator.storage.durable import FolderStore, open_durable
from orchestrator.storage.layout import ARTIFACTS, RunContext, RunMeta, RunResult, RunStorage

REPO = Path(__file__).resolve().parents[2]


def test_folder_store_reads_writes_appends_and_stays_inside(tmp_path):
    store = open_durable(tmp_path / "run")
    assert isinstance(store, FolderStore) and store.read_text("run.json") is None
    store.write_text("run.json", "{}")
    store.append_lines("events.jsonl", ["a", "b\n"])
    store.append_lines("events.jsonl", ["c"])
    assert store.read_text("run.json") == "{}" and store.read_lines("events.jsonl") == [
        "a",
        "b",
        "c",
    ]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.txt").write_text("1")
    store.upload_dir(tmp_path / "x", "export")
    assert store.list("export") == ["f.txt"] and store.exists("export/f.txt")
    store.delete("export")
    assert not store.exists("export")
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="not a relative name"):
            store.write_text(bad, "x")
    assert not (tmp_path / "escape").exists()


def test_storage_resolves_from_config_then_environment_then_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose("vicuna", "local")
    s = resolve.resolve(cfg, "r1", {})
    assert s.root == str(tmp_path / "runs") and s.run_url == f"{tmp_path}/runs/vicuna/r1"
    assert s.checkpoint_url == f"{tmp_path}/runs/vicuna/r1/checkpoints"
    s = resolve.resolve(cfg, "r1", {"ORCHESTRATOR_STORAGE_ROOT": "s3://b/p/"})
    assert (
        s.run_url == "s3://b/p/vicuna/r1" and s.checkpoint_url == "s3://b/p/vicuna/r1/checkpoints"
    )
    cfg = compose("vicuna", "local", ["storage.root=s3://other/x", "checkpoint.dir=s3://c/k"])
    s = resolve.resolve(cfg, "r1", {"ORCHESTRATOR_STORAGE_ROOT": "s3://b/p"})
    assert s.root == "s3://other/x" and s.checkpoint_url == "s3://c/k"


def test_a_cluster_refuses_what_its_nodes_cannot_reach_naming_the_fix(tmp_path):
    cfg = compose("vicuna", "local", ["checkpoint.dir=/mnt/ckpt"])
    s = resolve.resolve(cfg, "r", {})
    with pytest.raises(ConfigError) as e:
        resolve.check_cluster(cfg, s, f"sqlite:///{tmp_path}/mlflow.db", {})
    msg = str(e.value)
    assert "storage.root=s3://bucket/prefix" in msg and "storage.shared=true" in msg
    assert "checkpoint.dir=s3://bucket/prefix" in msg
    assert "MLFLOW_TRACKING_URI=http://" in msg
    # S3 + a tracking server: fine; a declared shared folder: fine.
    good = compose("vicuna", "local", ["storage.root=s3://b/p"])
    resolve.check_cluster(good, resolve.resolve(good, "r", {}), "http://mlflow:5000", {})
    resolve.check_cluster(cfg, s, "sqlite:///x.db", {"ORCHESTRATOR_STORAGE_SHARED": "1"})
    # a pretraining corpus on the launching machine's disk cannot be streamed by the workers
    text = compose("cerebras_gpt", "local", ["storage.root=s3://b/p", f"data.source={tmp_path}"])
    with pytest.raises(ConfigError, match="put the corpus on s3://"):
        resolve.check_cluster(text, resolve.resolve(text, "r", {}), "http://m:5000", {})
    stdlib = compose("cerebras_gpt", "local", ["storage.root=s3://b/p"])  # same on every node
    resolve.check_cluster(stdlib, resolve.resolve(stdlib, "r", {}), "http://m:5000", {})


def _examples() -> list[Example]:
    return [
        Example([1, 2, 3, 4], [-100, -100, 3, 4], weight=1.0),
        Example([5, 6], [5, 6], weight=2.0),
        Example([7, 8, 9], [-100, 8, 9], weight=0.5),
    ]


def test_prepared_data_round_trips_through_memory_mapped_arrays(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    m = write_prepared(
        tmp_path / "d", key="k", examples=_examples(), train_index=[0, 1, 1], eval_index=[2],
        tokenizer_dir=tok, vocab_size=10, pad_id=0, num_rows=3, skipped_rows=1, identity={"a": 1},
    )  # fmt: skip
    assert m.num_train == 3 and m.train_tokens == 4 + 2 + 2 and "examples.npy" in m.files
    data = open_prepared(tmp_path / "d", verify_hashes=True)
    assert [e.input_ids for e in data.train] == [[1, 2, 3, 4], [5, 6], [5, 6]]
    assert data.train[0].labels == [-100, -100, 3, 4] and data.eval[0].weight == 0.5
    assert list(data.train.lengths()) == [4, 2, 2] and data.vocab_size == 10
    assert [e.input_ids for e in data.train[1:]] == [[5, 6], [5, 6]]
    assert not any(p.suffix in (".pt", ".pkl") for p in (tmp_path / "d").rglob("*"))
    for arr in (tmp_path / "d").glob("*.npy"):  # plain arrays: nothing to unpickle
        np.load(arr, allow_pickle=False)
    ids = tmp_path / "d" / "ids-00000.npy"
    ids.write_bytes(ids.read_bytes()[:-4] + b"\x00\x00\x00\x07")
    with pytest.raises(BadPreparedData, match="sha256"):
        open_prepared(tmp_path / "d", verify_hashes=True)


def test_a_label_that_is_neither_its_token_nor_masked_is_refused(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    with pytest.raises(ValueError, match="neither its token id nor -100"):
        write_prepared(tmp_path / "d", key="k", examples=[Example([1, 2], [1, 9])],
                       train_index=[0], eval_index=[], tokenizer_dir=tok, vocab_size=10,
                       pad_id=0, num_rows=1, skipped_rows=0, identity={})  # fmt: skip


def test_data_key_follows_the_source_files_and_the_config(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n')
    cfg = DataConfig(format="gpt4all", source=str(src), template="gpt4all")
    k1, ident = data_key(cfg)
    assert data_key(cfg)[0] == k1 and ident["source"]["bytes"] == src.stat().st_size
    os.utime(src, ns=(1, 1))
    assert data_key(cfg)[0] == k1  # touched, not changed: the same data
    st = src.stat()
    src.write_text('{"prompt": "x", "response": "b"}\n')  # same size, mtime put back
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and data_key(cfg)[0] != k1  # the content changed
    k2 = data_key(cfg)[0]
    assert data_key(DataConfig(format="gpt4all", source=str(src), template="gpt4all",
                               max_seq_len=64))[0] != k2  # fmt: skip
    # flags that do not change the tokens do not change the key
    assert data_key(DataConfig(format="gpt4all", source=str(src), template="gpt4all",
                               rebuild=True,
                               lengths=LengthStats(num_examples=5, mean_tokens=9)))[0] == k2  # fmt: skip
    # a shipped sample has the same key on every checkout (named relative to the project)
    ident = data_key(compose("vicuna", "local").data)[1]
    assert ident["source"]["path"] == "data/samples/sharegpt_sample.json"


def test_records_round_trip_and_result_keeps_pretraining_keys_flat():
    meta = RunMeta("vicuna", "r", "local", mlflow_run_id="x", data_key="k", grants=[{"m": 1}])
    assert RunMeta.from_json(meta.to_json()) == meta
    res = RunResult(step=3, total_steps=4, stop_reason="completed", pretrain={"pretrain/x": 1.0})
    flat = json.loads(res.to_json())
    assert flat["pretrain/x"] == 1.0 and "pretrain" not in flat
    assert RunResult.from_json(res.to_json()) == res
    ctx = RunContext(RunStorage("s3://b", "j", "r", "s3://b/j/r/checkpoints"), "s3://b/.data/k",
                     "http://m", "id", 1, 0.0, 0.0, 1.0, "h")  # fmt: skip
    assert RunContext.from_dict(json.loads(json.dumps(ctx.to_dict()))) == ctx


def test_the_storage_doc_lists_every_artifact():
    doc = (REPO / "docs" / "storage.md").read_text()
    for a in ARTIFACTS:
        assert f"`{a.name}`" in doc, a.name
