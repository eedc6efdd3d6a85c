"""Untrusted input, planted the way an attacker (or a broken writer) would, on disk and on a real
S3 endpoint (moto_server). Each test fails on code that trusts what it reads.

Checkpoints: whoever can write the checkpoint prefix writes the manifest. Its paths must stay
inside the checkpoint folder and be checked before any I/O; sizes before hashes; malformed
manifests are skipped with a named reason and the previous checkpoint is used; objects that are
not checkpoints are ignored; a failed download leaves nothing; and with a signing key, a manifest
that is not signed with it is refused before any pickle in the checkpoint is read."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest

from orchestrator.checkpoint.io import Checkpointer
from orchestrator.checkpoint.manifest import KEY_ENV, MANIFEST, commit, step_dirname, tmp_dirname
from orchestrator.checkpoint.store import IncompleteCheckpoint, LocalStore, S3Store

pytestmark = pytest.mark.integration


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_local(root: Path, step: int, files: dict[str, bytes] | None = None) -> Path:
    tmp = root / tmp_dirname(step)
    tmp.mkdir(parents=True)
    for name, data in (files or {"__0_0.distcp": b"x" * 100}).items():
        (tmp / name).write_bytes(data)
    commit(tmp, root / step_dirname(step), {"step": step})
    return root / step_dirname(step)


def load(url: str, cache: Path) -> tuple[int | None, list[str]]:
    """What a resuming worker does: the newest checkpoint that verifies (shards 'read' by a
    callback that records the folder), and the warnings about the ones skipped."""
    import logging

    seen: list[Path] = []
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Grab()
    logging.getLogger("orchestrator.checkpoint.io").addHandler(handler)
    try:
        found = Checkpointer(url, staging=cache / "staging", keep_last=9).load_latest(
            lambda folder, _manifest: seen.append(folder), cache
        )
    finally:
        logging.getLogger("orchestrator.checkpoint.io").removeHandler(handler)
    return (found[1]["step"] if found else None), records


def forge(folder: Path, manifest) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


# ---------------------------------------------------------------------- on disk
@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ([1, 2], "JSON list"),
        ({"step": 4, "files": {}}, "no files listed"),
        ({"step": 4, "files": {"a.bin": {"sha256": "0" * 64}}}, "no valid size"),
        ({"step": "latest", "files": {"a.bin": {"bytes": 1, "sha256": "0" * 64}}}, "not a step"),
        ({"step": 4, "files": {"/dev/zero": {"bytes": 0, "sha256": "0" * 64}}}, "outside"),
        ({"step": 4, "files": {"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}}, "outside"),
    ],
)
def test_a_malformed_or_escaping_manifest_on_disk_is_skipped_with_its_reason(
    tmp_path, manifest, reason
):
    save_local(tmp_path / "ckpt", 2)
    d4 = save_local(tmp_path / "ckpt", 4)
    forge(d4, manifest)
    step, warnings = load(str(tmp_path / "ckpt"), tmp_path / "cache")
    assert step == 2, warnings
    assert any(reason in w and "step_00000004" in w for w in warnings), warnings


def test_a_listed_device_fifo_or_symlink_is_never_read(tmp_path):
    """Files that would hang or leak a hash loop: a symlink to /dev/zero with the size the loop
    needs, a symlink to a file outside, a symlink inside, a FIFO. Each is refused before a byte
    is read (a FIFO would block forever), and no error says the size of the target."""
    save_local(tmp_path / "ck", 2)
    d4 = save_local(tmp_path / "ck", 4)
    os.symlink("/dev/zero", d4 / "zero.bin")
    os.symlink("/etc/hostname", d4 / "host.bin")
    os.symlink(d4 / "__0_0.distcp", d4 / "inner.bin")
    os.mkfifo(d4 / "pipe.bin")
    m = json.loads((d4 / MANIFEST).read_text())
    cases = {
        "zero.bin": (10**15, "outside the checkpoint folder"),
        "host.bin": (1, "outside the checkpoint folder"),
        "inner.bin": (100, "not a regular file"),
        "pipe.bin": (0, "not a regular file"),
    }
    for name, (size, reason) in cases.items():
        m["files"] = {name: {"bytes": size, "sha256": "0" * 64}}
        forge(d4, m)
        step, warnings = load(str(tmp_path / "ck"), tmp_path / "cache")
        assert step == 2 and any(name in w and reason in w for w in warnings), (name, warnings)
        assert not any(" bytes, manifest says" in w for w in warnings), warnings


def test_a_step_folder_that_is_a_symlink_to_another_runs_is_not_loaded(tmp_path):
    """Another run's (valid, newer) checkpoint linked into this run's folder is not this run's
    state: it is neither listed nor readable as a checkpoint."""
    from orchestrator.checkpoint.manifest import BadManifest, read_manifest

    save_local(tmp_path / "mine", 2)
    theirs = save_local(tmp_path / "theirs", 8)
    os.symlink(theirs, tmp_path / "mine" / step_dirname(8))
    step, warnings = load(str(tmp_path / "mine"), tmp_path / "cache")
    assert step == 2, warnings
    with pytest.raises(BadManifest, match="a symlink, not a checkpoint folder"):
        read_manifest(tmp_path / "mine" / step_dirname(8))


def test_a_signed_store_refuses_a_forged_manifest_before_reading_any_pickle(tmp_path, monkeypatch):
    """With a signing key, an attacker who can write the prefix but not sign plants a checkpoint
    whose pickle would run code: it is refused before the pickle is opened."""
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    root = tmp_path / "ckpt"
    save_local(root, 2)
    assert json.loads((root / step_dirname(2) / MANIFEST).read_text())["signature"]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps(Evil())
    evil = root / step_dirname(6)
    evil.mkdir()
    (evil / ".metadata").write_bytes(payload)
    forge(
        evil, {"step": 6, "files": {".metadata": {"bytes": len(payload), "sha256": _sha(payload)}}}
    )

    def read_shards(folder: Path, _manifest) -> None:  # what DCP does with .metadata
        if (folder / ".metadata").exists():
            pickle.loads((folder / ".metadata").read_bytes())

    found = Checkpointer(str(root), tmp_path / "st", keep_last=9).load_latest(
        read_shards, tmp_path / "c"
    )
    assert found[1]["step"] == 2 and not marker.exists()
    # the same manifest with a signature made with another key: refused too
    forged = {"step": 6, "files": {".metadata": {"bytes": len(payload), "sha256": _sha(payload)}}}
    forged["signature"] = "0" * 64
    forge(evil, forged)
    with pytest.raises(IncompleteCheckpoint, match="wrong signature"):
        LocalStore(root).read_manifest(6)
    assert not marker.exists()
    # and a signed manifest whose file list is edited afterwards fails its signature
    good = json.loads((root / step_dirname(2) / MANIFEST).read_text())
    good["files"]["__0_0.distcp"]["bytes"] = 1
    forge(root / step_dirname(2), good)
    with pytest.raises(IncompleteCheckpoint, match="wrong signature"):
        LocalStore(root).read_manifest(2)


# ---------------------------------------------------------------------- on S3 (moto_server)
@pytest.fixture
def s3(start_moto, monkeypatch):
    import boto3

    url, _ = start_moto()
    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="ckpt")
    return client


def save_s3(tmp_path: Path, url: str, step: int) -> None:
    ck = Checkpointer(url, staging=tmp_path / "staging", keep_last=9)

    def write(target, group) -> None:
        target.write_bytes("__0_0.distcp", b"s" * 64)

    ck.save(step, write, {"step": step})


def test_an_s3_manifest_cannot_write_outside_the_cache(s3, tmp_path):
    """A manifest listing ../ paths and an absolute path: nothing is written outside the cache
    (a .bashrc), the checkpoint is skipped with its reason, the previous one is used."""
    url = "s3://ckpt/run"
    save_s3(tmp_path, url, 2)
    home = tmp_path / "home"
    cache = home / "scratch" / "cache"
    bad = {"step": 4, "files": {
        "../../../.bashrc": {"bytes": 5, "sha256": _sha(b"evil\n")},
        str(home / "abs.txt"): {"bytes": 5, "sha256": _sha(b"evil\n")},
    }}  # fmt: skip
    for rel in bad["files"]:
        s3.put_object(Bucket="ckpt", Key=f"run/step_00000004/{rel.lstrip('/')}", Body=b"evil\n")
    s3.put_object(Bucket="ckpt", Key="run/step_00000004/manifest.json", Body=json.dumps(bad))
    step, warnings = load(url, cache)
    assert step == 2 and any("outside the checkpoint folder" in w for w in warnings), warnings
    assert not (home / ".bashrc").exists() and not (home / "abs.txt").exists()
    assert not list(home.rglob(".bashrc"))


def test_stray_objects_under_the_prefix_are_ignored(s3, tmp_path):
    url = "s3://ckpt/run2"
    save_s3(tmp_path, url, 2)
    s3.put_object(Bucket="ckpt", Key="run2/step_latest/manifest.json", Body=b'{"step": 9}')
    s3.put_object(Bucket="ckpt", Key="run2/step_99/manifest.json", Body=b"{}")
    s3.put_object(Bucket="ckpt", Key="run2/notes.txt", Body=b"hello")
    assert S3Store(url).complete_steps() == [2]
    assert load(url, tmp_path / "cache")[0] == 2


def test_a_failed_download_leaves_nothing_behind(s3, tmp_path):
    url = "s3://ckpt/run3"
    save_s3(tmp_path, url, 2)
    save_s3(tmp_path, url, 4)
    s3.delete_object(Bucket="ckpt", Key="run3/step_00000004/__0_0.distcp")  # lost after commit
    cache = tmp_path / "cache"
    with pytest.raises(IncompleteCheckpoint, match="missing or has the wrong size"):
        S3Store(url).fetch(4, cache)
    assert not (cache / step_dirname(4)).exists()
    assert load(url, cache)[0] == 2


def test_a_rank_reads_its_own_files_and_the_manifest_lists_all(s3, tmp_path):
    """A resume from S3 on a node of its own: rank 0's folder holds the shared files and its own
    RNG state only; the reader is handed the (rank-0-checked) manifest, which lists every rank's
    files, and must not look for the others on disk (a multi-node resume failed that way)."""
    url = "s3://ckpt/run4"
    ck = Checkpointer(url, staging=tmp_path / "staging", keep_last=9)

    def write(target, group) -> None:
        for name in ("__0_0.distcp", "__1_0.distcp", "rng_rank0.pt", "rng_rank1.pt"):
            target.write_bytes(name, name.encode() * 8)

    ck.save(2, write, {"step": 2})
    seen: dict[str, set[str]] = {}

    def read_shards(folder: Path, manifest) -> None:
        seen["folder"] = {p.name for p in folder.iterdir() if p.suffix in (".distcp", ".pt")}
        seen["manifest"] = set(manifest["files"])

    found = Checkpointer(url, staging=tmp_path / "st", keep_last=9).load_latest(
        read_shards, tmp_path / "cache"
    )
    assert found is not None and found[1]["step"] == 2
    assert seen["folder"] == {"__0_0.distcp", "__1_0.distcp", "rng_rank0.pt"}
    assert seen["manifest"] == seen["folder"] | {"rng_rank1.pt"}


def test_a_rank_fetches_the_blocks_it_reads_of_another_ranks_file(s3, tmp_path, monkeypatch):
    """DCP stores replicated items once, in some rank's file: a rank reading a few bytes of
    another rank's file fetches the block holding them (a ranged GET, verified against its
    hash in the manifest), not the file; a tampered block it reads is refused."""
    from orchestrator.checkpoint import blocks

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64 << 10)
    url = "s3://ckpt/run5"
    big = bytes(range(256)) * 1024  # 256 KiB: 4 blocks

    def write(target, group) -> None:
        target.write_bytes("__0_0.distcp", big)
        target.write_bytes("__1_0.distcp", big[::-1])

    Checkpointer(url, staging=tmp_path / "staging", keep_last=9).save(2, write, {"step": 2})
    reads = {"__0_0.distcp": [(0, len(big))], "__1_0.distcp": [(70000, 16)]}  # block 1 of 4
    got: dict[str, bytes] = {}

    def read_shards(folder: Path, manifest) -> None:
        with open(folder / "__1_0.distcp", "rb") as f:
            f.seek(70000)
            got["item"] = f.read(16)

    ck = Checkpointer(url, staging=tmp_path / "st", keep_last=9)
    found = ck.load_latest(read_shards, tmp_path / "cache", lambda ensure: reads)
    assert found is not None and got["item"] == big[::-1][70000:70016]
    rng = found[1]["files"]["rng_rank0.pt"]["bytes"]  # the save wrote this rank's RNG state
    assert ck.fetch_stats.fetched_bytes == len(big) + (64 << 10) + rng  # its file + one block
    # the block it reads, replaced in the store with bytes of the same size: refused
    bad = bytearray(big[::-1])
    bad[70001] ^= 0xFF
    s3.put_object(Bucket="ckpt", Key="run5/step_00000002/__1_0.distcp", Body=bytes(bad))
    ck = Checkpointer(url, staging=tmp_path / "st2", keep_last=9)
    assert ck.load_latest(read_shards, tmp_path / "cache2", lambda ensure: reads) is None


# --------------------------------------------------------------------------- secrets
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"  # AWS-style: contains '/'
URL_PW = "p4ss/w@rd"  # a URL password with '/' and '@'
SIGNATURE = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
BEARER = "eyJhbGciOiJIUzI1NiJ9.payload.sig123"


def test_resolvers_are_refused_and_the_secret_never_printed(monkeypatch):
    from orchestrator.compose.load import compose
    from orchestrator.config.schema import ConfigError

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for override in (
        "description=${oc.env:AWS_SECRET_ACCESS_KEY}",
        "optim.lr=${oc.env:AWS_SECRET_ACCESS_KEY,1e-3}",
        "data.source=${oc.decode:${oc.env:AWS_SECRET_ACCESS_KEY}}",
    ):
        with pytest.raises(ConfigError, match="resolvers") as e:
            compose("vicuna", "local", [override])
        assert SECRET not in str(e.value)
    # interpolation between keys stays
    assert compose("vicuna", "local", ["description=${job}"]).description == "vicuna"


def test_planted_secrets_reach_no_store_artifact_tag_or_output(launch_workdir, monkeypatch, capfd):
    """A run with secrets in the environment and in its config text: nothing under the working
    directory (MLflow's store and artifacts, the run folder) and nothing printed holds them."""
    from orchestrator.launch.run import launch

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Q" * 34)
    signing = "sign-" + "k7" * 16  # the checkpoint signing key: whoever has it signs manifests
    forwarded = "dsn-" + "z9" * 12  # any secret the user forwards, whatever its name
    monkeypatch.setenv(KEY_ENV, signing)
    monkeypatch.setenv("ORCHESTRATOR_FORWARD_SECRETS", "MLFLOW_TRACKING_USERNAME")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", forwarded)
    description = (
        f"key {SECRET}; sign {signing}; dsn {forwarded}; "
        f"db postgresql://me:{URL_PW}@db.internal:5432/x; "
        f"presigned https://b.s3.amazonaws.com/o?X-Amz-Signature={SIGNATURE}&x=1; "
        f"Authorization: Bearer {BEARER}"
    )
    res = launch(
        "vicuna", "local",
        [f"description='{description}'", "train.max_steps=2", "checkpoint.every_steps=2",
         "model.pretrained=null",  # the shared base was published unsigned, before the key
         "export.enabled=false"],
        run_name="secrets",
    )  # fmt: skip
    assert res.stop_reason == "completed"
    printed = "".join(capfd.readouterr())
    planted = [SECRET, URL_PW, SIGNATURE, BEARER, "hf_" + "Q" * 34, signing, forwarded]
    for secret in planted:
        assert secret not in printed, secret
    leaks = []
    for p in Path(launch_workdir).rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            leaks += [(str(p), s) for s in planted if s.encode() in data]
    assert not leaks, leaks
    # what was there is still there, redacted
    from mlflow.tracking import MlflowClient

    run = MlflowClient(res.tracking_uri).get_run(res.mlflow_run_id)
    assert "***REDACTED***" in run.data.params["description"]
    assert "db.internal:5432" in run.data.params["description"]


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("run", ["../../../../tmp/x", "/etc/cron.d", ".hidden", "a/b", "x" * 101])
def test_run_names_that_escape_are_refused_before_anything_exists(tmp_path, monkeypatch, run):
    from orchestrator.config.schema import ConfigError
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not a valid name"):
        launch("vicuna", "local", ["train.max_steps=1"], run_name=run)
    assert not any(tmp_path.iterdir())  # no runs/, no mlflow.db


def test_job_names_that_escape_are_refused():
    from orchestrator.compose.load import compose
    from orchestrator.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"job='../../x' is not a valid name"):
        compose("vicuna", "local", ["job=../../x"])


@pytest.mark.parametrize(
    "args",
    [
        ["launch", "run=x; touch {p}"],
        ["launch", "run=$(touch {p})"],
        ["estimate", "set=$(touch {p})"],
        ["estimate", 'set=a=1" ; touch {p}; echo "'],
        ["estimate", "set=$(shell touch {p})"],
        ["estimate", "job=`touch {p}`"],
    ],
)
def test_make_passes_user_values_as_data_never_as_shell(tmp_path, args):
    """`make` with values a script might pass along from somewhere untrusted: nothing runs."""
    import subprocess

    from orchestrator.paths import REPO_ROOT

    marker = tmp_path / "pwned"
    argv = ["make", "-s", "-C", str(REPO_ROOT), args[0], args[1].format(p=marker)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert not marker.exists(), out.stdout + out.stderr
    assert out.returncode != 0  # refused, by name or config checks
    assert "error:" in out.stderr


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "override, match",
    [
        ("budget.max_usd=nan", "budget.max_usd=nan must be a finite number"),
        ("budget.max_hours=inf", "budget.max_hours=inf must be a finite number"),
        ("optim.lr=-1e-3", "optim.lr=-0.001 must be > 0"),
        ("cost.instances.local-2vcpu.on_demand_per_hour_usd=0", r"catalog.*must be > 0"),
        ("cost.instances.local-2vcpu.on_demand_per_hour_usd=-1", r"must be > 0"),
        ("cost.gpus.A100-80GB.peak_flops=0", r"peak_flops=0.0 must be > 0"),
        ("cost.cpu_peak_flops_per_worker=0", "must be > 0"),
        ("checkpoint.mtbf_hours=nan", "must be a finite number"),
        ("cost.instances.local-2vcpu.source=''", "source is empty"),
    ],
)
def test_numbers_that_would_disable_safety_are_config_errors(override, match):
    from orchestrator.compose.load import compose
    from orchestrator.config.schema import ConfigError

    with pytest.raises(ConfigError, match=match):
        compose("vicuna", "local", [override])


# --------------------------------------------------------------------------- data edges
def test_fewer_examples_than_a_global_batch_fail_at_preparation(tmp_path, monkeypatch):
    """Caught on the driver before any worker starts (no Ray cluster, no retries)."""
    import ray

    from orchestrator.data.formats import DataError
    from orchestrator.launch.run import launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    started = ray.is_initialized()
    with pytest.raises(DataError, match=r"fewer than one global batch"):
        launch("vicuna", "local", ["data.max_examples=3", "train.global_batch_size=8"], "few")
    assert ray.is_initialized() == started  # no cluster was started for it
    assert not list(tmp_path.rglob("failures.jsonl"))


# --------------------------------------------------------------------------- clusters
def test_a_private_cluster_refuses_jobs_api_requests_without_the_token():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import re, urllib.request, urllib.error
        from orchestrator.launch.ray_session import ray_cluster
        with ray_cluster(1) as desc:
            url = re.search(r"dashboard (http://\\S+),", desc).group(1)
            for path in ("/api/jobs/", "/api/version"):
                try:
                    urllib.request.urlopen(url + path, timeout=10)
                    print("OPEN", path)
                except urllib.error.HTTPError as e:
                    print("STATUS", path, e.code)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env
    )
    assert "STATUS /api/jobs/ 401" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "OPEN" not in out.stdout


def test_a_private_cluster_exports_no_metrics_on_every_interface():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import re
        from orchestrator.launch.ray_session import ray_cluster
        from tests.faults import prometheus_on_all_interfaces
        with ray_cluster(1) as desc:
            temp = re.search(r"temp (\\S+)\\)", desc).group(1)
            for found in prometheus_on_all_interfaces(temp):
                print("EXPORTER", found)
            print("SCANNED")
        """
    )
    from orchestrator.paths import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env,
        cwd=str(REPO_ROOT),
    )  # fmt: skip
    assert "SCANNED" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "EXPORTER" not in out.stdout, out.stdout


def test_jobs_api_uploads_leave_secret_looking_files_behind(tmp_path):
    """Ray's own packaging, with the launcher's excludes: what would reach the cluster's GCS."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from orchestrator.launch.named_clusters import working_dir_excludes

    src = tmp_path / "repo"
    secrets = [".env", ".env.prod", "deploy.pem", "id_rsa", "id_ed25519.pub", ".netrc",
               "credentials", "mlflow.db", "store.db", ".ray/auth_token", ".aws/credentials",
               "conf/server.key", ".hf_token", "service-account.json", "aws_credentials.ini",
               "conf/gcp-service-account.json", "data/hf_token.txt", "jobs/my_secrets.yaml",
               "notes/passwords.txt", "orchestrator/.env"]  # fmt: skip
    keep = ["orchestrator/x.py", "orchestrator/data/tokenizer.py", "jobs/vicuna.yaml",
            "README.md", "conf/model/llama_7b.yaml", "data/alpaca_sample.json"]  # fmt: skip
    for rel in secrets + keep:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    pkg = tmp_path / "pkg.zip"
    create_package(str(src), pkg, include_gitignore=True, excludes=working_dir_excludes(src))
    names = set(zipfile.ZipFile(pkg).namelist())
    assert set(keep) <= names, names
    assert not [s for s in secrets if s in names], names


def test_a_failed_run_ends_with_a_short_message_not_a_traceback():
    from orchestrator.launch.run import RunFailed

    e = RunFailed(
        "training failed 4 times with an application error (train.max_failures=3); last error:\n"
        "Traceback (most recent call last):\n  File ...\nValueError: boom"
    )
    e.job, e.run, e.run_url = "vicuna", "r1", "runs/vicuna/r1"
    text = e.summary()
    assert text.splitlines()[0].startswith("error: run 'r1' of 'vicuna' stopped:")
    assert "ValueError: boom" in text and "runs/vicuna/r1/failures.jsonl" in text
    assert "make launch job=vicuna run=r1" in text and "File ..." not in text
