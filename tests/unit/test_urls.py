"""Storage locations are parsed in one place (orchestrator/urls.py): s3://, file:// and paths;
gs:// recognised and refused with the key named; any other scheme refused."""

from __future__ import annotations

import pytest

from orchestrator.config.errors import ConfigError
from orchestrator.urls import is_object_store, local_path, scheme


@pytest.mark.parametrize(
    "url, want",
    [
        ("s3://bucket/prefix", "s3"),
        ("file:///data/runs", "file"),
        ("/data/runs", "file"),
        ("runs", "file"),
        ("huggyllama/llama-7b", "file"),  # a hub id is no storage URL
        ("base:tiny_llama", "file"),
    ],
)
def test_schemes(url, want):
    assert scheme(url) == want
    assert is_object_store(url) == (want == "s3")


def test_file_urls_are_folders():
    assert local_path("file:///data/runs") == "/data/runs" and local_path("runs") == "runs"


@pytest.mark.parametrize("url, message", [("gs://b/p", "not supported yet"),
                                          ("hdfs://nn/p", "unknown scheme hdfs://")])  # fmt: skip
def test_other_schemes_are_refused_at_config_time_naming_the_key(url, message):
    from orchestrator.compose.load import compose

    with pytest.raises(ConfigError, match=f"storage.root='{url}'.*{message}"):
        compose("vicuna", "local", [f"storage.root={url}"])
    with pytest.raises(ConfigError, match="checkpoint.dir"):
        compose("vicuna", "local", [f"checkpoint.dir={url}"])
    assert not is_object_store(url)


def test_a_file_url_root_is_a_folder_store(tmp_path):
    from orchestrator.compose.load import compose
    from orchestrator.storage.durable import FolderStore, open_durable
    from orchestrator.storage.resolve import resolve

    cfg = compose("vicuna", "local", [f"storage.root=file://{tmp_path}"])
    st = resolve(cfg, "r", {})
    assert st.root == str(tmp_path.resolve())
    assert isinstance(open_durable(f"file://{tmp_path}"), FolderStore)
