"""Small pretrained bases for the local scale, built here by the project's own pretraining path.

The local scale of a fine-tuning recipe takes the same path as the full one: it starts from a
pretrained base of its architecture and loads it the way a 13B base is loaded (meta device on
every rank, read once by rank 0, broadcast). No hub is reachable here, so the base is made:

    model.pretrained: base:tiny_llama      # conf/bases/tiny_llama.yaml
    data.tokenizer: base:tiny_llama        # its tokenizer tokenizes the recipe's data

`conf/bases/<name>.yaml` is a pretraining job (data.format text on this Python's standard
library). On first use it runs in a subprocess: a single-process world, the recipe loop, the
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

from orchestrator.config.load import CONF_DIR
from orchestrator.config.schema import ConfigError

PREFIX = "base:"
BASES = CONF_DIR / "bases"
BUILDER_VERSION = 1
"""Bumped when the way a base is built changes (its cache key changes with it)."""
BASES_DIR = ".bases"  # in the durable store: <root>/.bases/<name>-<hash>


def is_base(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(PREFIX)


def _definition(name: str) -> Path:
    path = BASES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in BASES.glob("*.yaml"))
        raise ConfigError(f"no local base named {name!r} ({path}); known: {known}")
    return path


def base_id(ref: str) -> str:
    """`base:NAME` -> `NAME-<hash of its definition and the builder>`."""
    name = ref[len(PREFIX) :]
    text = _definition(name).read_text()
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
        [sys.executable, "-m", "orchestrator.training.bases", "build", name, str(folder)],
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


def fetch(url: str, node_cache: Path) -> Path:
    """A pretrained folder (`model.pretrained` as a folder or an s3:// prefix) on this node:
    from S3 downloaded once per node (a lock serialises the node's processes)."""
    from orchestrator.storage.durable import FolderStore, open_durable

    store = open_durable(url)
    if isinstance(store, FolderStore):
        return store.local_path()
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    dest = node_cache / f"{url.rstrip('/').rsplit('/', 1)[-1]}-{key}"
    with _locked(dest.with_name(dest.name + ".lock")):
        if not (dest / ".fetched").exists():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            names = store.list()
            if "config.json" not in names:
                raise RuntimeError(f"model.pretrained={url}: no config.json under that prefix")
            for rel in names:
                store.get_file(rel, tmp / rel)
            (tmp / ".fetched").write_text(url)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
    return dest


def build(name: str, out: Path) -> dict:
    """Pretrain the base in this process (a world of one) and export it to `out`."""
    import tempfile

    import torch
    import torch.distributed as dist

    from orchestrator.config.load import compose
    from orchestrator.data.dataset import prepare_data
    from orchestrator.storage.layout import RunContext, RunResult, RunStorage
    from orchestrator.training.loop import FinetuneRecipe

    cfg = compose(str(_definition(name)), "local")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if not dist.is_initialized():
            store = dist.FileStore(str(d / "pg"), 1)
            dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        prepare_data(cfg.data, d / "data")
        import mlflow

        uri = f"sqlite:///{d / 'mlflow.db'}"
        client = mlflow.tracking.MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("base")).info.run_id
        storage = RunStorage(str(d / "runs"), cfg.job, "build", str(d / "ckpt"), str(d / "scratch"))
        ctx = RunContext(storage, str(d / "data"), uri, run_id, 1, time.time(), 0.0, 0.0, "base")
        recipe = FinetuneRecipe(cfg, ctx)
        recipe.setup()
        try:
            recipe.train()
        finally:
            recipe.cleanup()
        export = Path(storage.run_url) / "export"
        result = RunResult.from_json(storage.run_store().read_text("result.json") or "{}")
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(export, tmp)
        for f in ("probe.pt", "samples.json"):
            (tmp / f).unlink(missing_ok=True)
        info = {
            "name": name,
            "id": out.name,
            "n_params": result.n_params,
            "tokens": result.tokens,
            "steps": result.step,
            "eval_loss": result.eval_loss,
            "torch": torch.__version__,
            "built": time.time(),
        }
        (tmp / "base.json").write_text(json.dumps(info, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return info


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "build":
        build(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "build":
        print(local_base(PREFIX + sys.argv[2]))
    else:
        sys.exit("usage: python -m orchestrator.training.bases build NAME [OUT]")
