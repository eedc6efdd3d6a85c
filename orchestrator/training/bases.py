"""Small pretrained bases for the local scale, built here by the project's own pretraining path.

The local scale of a fine-tuning recipe takes the same path as the full one: it starts from a
pretrained base of its architecture and loads it the way a 13B base is loaded (meta device on
every rank, read once by rank 0, broadcast). No hub is reachable here, so the base is made:

    model.pretrained: base:tiny_llama      # conf/bases/tiny_llama.yaml
    data.tokenizer: base:tiny_llama        # its tokenizer tokenizes the recipe's data

`conf/bases/<name>.yaml` is a pretraining job (data.format text on this Python's standard
library). On first use it runs in a subprocess (`training/base_build.py`): a single-process world, the recipe loop, the
export; ~1 minute here. The Hugging Face folder it exports is cached outside the repository
under the hash of the base's file (`$ORCHESTRATOR_CACHE/bases` or `~/.cache/orchestrator/bases`),
and each launch publishes it to its durable store (`<root>/.bases/<name>-<hash>`), where the
workers (and a launch from anywhere) find it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.config.schema import ConfigError
from orchestrator.paths import CONF_DIR
from orchestrator.urls import is_object_store

PREFIX = "base:"
BASES = CONF_DIR / "bases"
BUILDER_VERSION = 2
"""Bumped when the way a base is built changes (its cache key changes with it). 2: the base
carries a model manifest (checkpoint/exports.py)."""
BASES_DIR = ".bases"  # in the durable store: <root>/.bases/<name>-<hash>


def is_base(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(PREFIX)


def definition(name: str) -> Path:
    path = BASES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BASES.glob("*.yaml"))
        raise ConfigError(f"no local base named {name!r} ({path}); known: {known}")
    return path


def base_id(ref: str) -> str:
    """`base:NAME` -> `NAME-<hash of its definition and the builder>`."""
    name = ref[len(PREFIX) :]
    text = definition(name).read_text()
    digest = hashlib.sha256(f"{BUILDER_VERSION}\n{text}".encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def cache_root() -> Path:
    root = os.environ.get("ORCHESTRATOR_CACHE") or str(Path.home() / ".cache" / "orchestrator")
    return Path(root) / "bases"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def local_base(ref: str) -> Path:
    """The base's folder on this machine, built first if it is not cached (one builder at a
    time: a second launch waits for the first one's build)."""
    folder = cache_root() / base_id(ref)
    with _locked(folder.with_name(folder.name + ".lock")):
        if not (folder / "base.json").exists():
            _build_in_subprocess(ref[len(PREFIX) :], folder)
    return folder


def _build_in_subprocess(name: str, folder: Path) -> None:
    print(f"building the local base {name!r} (first use, ~1 minute): {folder}", flush=True)
    t0 = time.time()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.training.base_build", name, str(folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"building the local base {name!r} failed:\n{out.stderr[-4000:]}")
    info = json.loads((folder / "base.json").read_text())
    print(
        f"  built in {time.time() - t0:.0f} s: {info['n_params']:,} parameters, "
        f"{info['tokens']:,} tokens, eval loss {info['eval_loss']:.3f}",
        flush=True,
    )


def publish(ref: str, root: str) -> str:
    """The base in the durable store under `root` (copied there once); returns its URL."""
    from orchestrator.storage.durable import FolderStore, open_durable

    bid = base_id(ref)
    url = f"{root.rstrip('/')}/{BASES_DIR}/{bid}"
    store = open_durable(url)
    if store.read_text("base.json") is not None:
        return url
    local = local_base(ref)
    if isinstance(store, FolderStore):
        dest = store.local_path()
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local, tmp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not (dest / "base.json").exists():
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        shutil.rmtree(tmp, ignore_errors=True)
        return url
    for p in sorted(local.rglob("*")):
        if p.is_file() and p.name != "base.json":
            store.put_file(str(p.relative_to(local)), p)
    store.write_text("base.json", (local / "base.json").read_text())  # last: complete
    return url


def fetch(
    url: str, node_cache: Path, expect_digest: str | None = None, verify: bool = True
) -> Path:
    """A pretrained folder (`model.pretrained` as a folder or an s3:// prefix) on this node:
    from S3 downloaded once per node (a lock serialises the node's processes). A folder that
    carries a model manifest (every export and local base does) is verified file by file
    against it, and its digest against `expect_digest` (what the launcher recorded): a
    replaced or corrupted model is refused here, naming the file, never trained on.
    `verify=False`: a folder the node's leader has verified already is used as it is.

    Raises:
        BadModel: the folder does not match its manifest or the expected digest.
    """
    from orchestrator.storage.durable import FolderStore, open_durable

    store = open_durable(url)
    if isinstance(store, FolderStore):
        folder = store.local_path()
        if verify:
            _verify(folder, expect_digest, url)
        return folder
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    dest = node_cache / f"{url.rstrip('/').rsplit('/', 1)[-1]}-{key}"
    done = dest.with_name(dest.name + ".fetched")  # beside it: the folder holds only the model
    with _locked(dest.with_name(dest.name + ".lock")):
        if done.exists() and done.read_text() != (expect_digest or url):
            done.unlink()  # fetched for another digest: the prefix changed since
        if not done.exists():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            names = store.list()
            if "config.json" not in names:
                raise RuntimeError(f"model.pretrained={url}: no config.json under that prefix")
            for rel in names:
                store.get_file(rel, tmp / rel)
            try:
                _verify(tmp, expect_digest, url)
            except ValueError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            done.write_text(expect_digest or url)
    return dest


def _verify(folder: Path, expect_digest: str | None, url: str) -> None:
    """A folder with a model manifest: every file against it, and its digest against the
    expected one. Without a manifest, a `sha256:` expectation is checked on its files."""
    from orchestrator.checkpoint.exports import (
        MODEL_MANIFEST,
        BadModel,
        model_digest,
        verify_model_folder,
    )
    from orchestrator.checkpoint.manifest import file_hashes

    expect = expect_digest if expect_digest and expect_digest.startswith("sha256:") else None
    try:
        if (folder / MODEL_MANIFEST).exists():
            verify_model_folder(folder, expect)
        elif expect is not None and model_digest({"files": file_hashes(folder)}) != expect:
            raise BadModel(f"{folder}: its files are not the ones the launch recorded ({expect})")
    except BadModel as e:
        raise BadModel(str(e).replace(str(folder), url)) from None


def model_identity(ref: str | None, revision: str | None = None) -> str:
    """What a model reference is, as a string that changes when its weights do (the launcher's
    view, before any worker starts):

    - a folder or s3:// prefix with a model manifest: its digest (`sha256:...`);
    - a folder without one: the same digest computed from its files (read and hashed here);
    - an s3:// prefix without one: the SHA-256 of its listing (names, sizes, ETags);
    - a Hugging Face id: `hf:<id>@<revision>` (pin `model.revision` to a commit for a check
      that means something: a branch can move);
    - None: `random-init`.
    """
    from orchestrator.checkpoint.exports import (
        MODEL_MANIFEST,
        model_digest,
        parse_model_manifest,
        read_model_manifest,
    )

    if not ref:
        return "random-init"
    if is_object_store(ref):
        from orchestrator.storage.s3 import S3, split_url

        text = _s3_text(ref, MODEL_MANIFEST)
        if text is not None:
            return model_digest(parse_model_manifest(text, f"{ref}/{MODEL_MANIFEST}"))
        bucket, prefix = split_url(ref)
        listing = S3().list(bucket, prefix.rstrip("/") + "/" if prefix else "")
        if not listing:
            raise ConfigError(f"model reference {ref}: nothing under that prefix")
        rows = sorted((k[len(prefix) :], o.size, o.etag) for k, o in listing.items())
        return "s3-etags:" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    path = Path(ref)
    if path.is_dir():
        manifest = read_model_manifest(path)
        if manifest is not None:
            return model_digest(manifest)
        from orchestrator.checkpoint.manifest import file_hashes

        return model_digest({"files": file_hashes(path)})
    return f"hf:{ref}@{revision or 'main'}"


def _s3_text(url: str, rel: str) -> str | None:
    from orchestrator.storage.durable import open_durable

    return open_durable(url).read_text(rel)


if __name__ == "__main__":  # python -m orchestrator.training.bases build <name>
    if len(sys.argv) != 3 or sys.argv[1] != "build":
        known = sorted(p.stem for p in BASES.glob("*.yaml"))
        sys.exit(f"usage: python -m orchestrator.training.bases build <name>; known: {known}")
    print(f"{sys.argv[2]}: {local_base('base:' + sys.argv[2])}")
