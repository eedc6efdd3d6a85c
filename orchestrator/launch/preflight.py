"""The checks of `make preflight cluster=aws-spot job=vicuna`: what a first real run trips on,
checked before any money is spent. Every failed check says how to fix it. Which run where is
decided in backends.py (`run_checks`): the ones every cluster gets (1, 4, 5), then the
cluster backend's own (2, 3, 6 for a Ray-launcher cluster on AWS; kubectl, the KubeRay
operator and the image for KubeRay).

1. the job composes, and its storage and tracking are reachable from every node
   (storage.root on S3 or a declared shared folder, a tracking server: resolve.check_cluster);
2. AWS credentials and region (STS GetCallerIdentity);
3. the node type the autoscaler will launch for the job, in each market it may use (same
   instance as the projection priced, same GPUs per node), and the EC2 vCPU quota (Service
   Quotas) of that type's family against what the job needs;
4. read and write access to the durable store and the checkpoint prefix (a marker object put,
   read back and deleted);
5. the MLflow tracking server answers;
6. the cluster's container image exists (ECR: DescribeImages) and holds what the job needs
   (its labels, written at build time by infra/Dockerfile: flash-attn, bitsandbytes).

Checks 2, 3 and 6 are for clusters on AWS (provider `aws` in infra/); on another cluster those
that do not apply are listed as not run (`[n/a ]`, with the reason) and the summary counts them apart; the others
run for every cluster. The quota decision is a pure function (`quota_check`), unit-tested with numbers.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from dataclasses import dataclass

from orchestrator.config.schema import ConfigError, JobConfig

# EC2 vCPU quota codes per instance family letter (Service Quotas, service code "ec2").
QUOTA_CODES = {
    "P": {"on_demand": "L-417A185B", "spot": "L-7212CCBC", "name": "P"},
    "G": {"on_demand": "L-DB2E81BA", "spot": "L-3819A6DF", "name": "G and VT"},
    "standard": {"on_demand": "L-1216C47A", "spot": "L-34B43A08", "name": "Standard (A, C, D, H, I, M, R, T, Z)"},
}  # fmt: skip


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    applies: bool = True
    """False: not run, because it does not apply to this cluster (it says why)."""

    def line(self) -> str:
        mark = "n/a " if not self.applies else "ok  " if self.ok else "FAIL"
        return f"[{mark}] {self.name}: {self.detail}" + (
            f"\n       fix: {self.fix}" if self.fix and not self.ok else ""
        )


AWS_ONLY = ("AWS credentials and region", "node types and EC2 vCPU quotas", "container image")
"""What only a cluster on AWS is checked for (checks 2, 3 and 6)."""


def not_applicable(provider: str) -> list[Check]:
    """The AWS checks, reported as not run on a cluster of another provider."""
    why = f"not run: the cluster's provider is {provider!r}, these are for provider 'aws'"
    return [Check(name, True, why, applies=False) for name in AWS_ONLY]


def summary(checks: list[Check]) -> str:
    ran = [c for c in checks if c.applies]
    failed = [c for c in ran if not c.ok]
    skipped = len(checks) - len(ran)
    return (
        f"{len(ran) - len(failed)} of {len(ran)} checks passed"
        + (f", {skipped} did not apply to this cluster" if skipped else "")
        + ("" if not failed else f"; fix the {len(failed)} above before launching")
    )


def family(instance_type: str) -> str:
    """The vCPU quota family of an EC2 instance type (p4de.24xlarge -> P)."""
    head = instance_type.split(".")[0].lower()
    if head.startswith("p"):
        return "P"
    if head.startswith(("g", "vt")):
        return "G"
    return "standard"


def quota_check(
    market: str, family_name: str, code: str, quota_vcpus: float, need_vcpus: int
) -> Check:
    """Pure: does a quota of `quota_vcpus` cover `need_vcpus`?"""
    name = f"{market} vCPU quota ({family_name} instances, {code})"
    if quota_vcpus >= need_vcpus:
        return Check(name, True, f"{quota_vcpus:.0f} vCPUs, the job needs {need_vcpus}")
    return Check(
        name,
        False,
        f"{quota_vcpus:.0f} vCPUs, the job needs {need_vcpus}",
        "request an increase (it takes hours to days): aws service-quotas "
        f"request-service-quota-increase --service-code ec2 --quota-code {code} "
        f"--desired-value {need_vcpus}",
    )


def needed_vcpus(cfg: JobConfig) -> tuple[str, int]:
    """(instance type, vCPUs) of the job's worker nodes."""
    hw = cfg.hardware
    price = cfg.cost.instances[hw.instance_type]
    return hw.instance_type, hw.num_nodes * (price.vcpus or 1)


def node_type_checks(node_types: dict, cfg: JobConfig) -> tuple[list[Check], dict[str, dict]]:
    """Pure: for each market the launch may use, the node type it will launch (a Check each),
    and those node types by market."""
    from orchestrator.launch.autoscale import markets, node_type_for, zones_for

    checks, found = [], {}
    for market in markets(cfg):
        name = f"{market} node type for {cfg.hardware.instance_type}"
        try:
            tname, t = node_type_for(node_types, cfg, market)
        except ConfigError as e:
            checks.append(Check(name, False, str(e), "see docs/clusters.md (node types)"))
            continue
        found[market] = t
        zones = [z for z in zones_for(node_types, cfg, market) if z]
        where = f", zones {', '.join(zones)} in this order" if zones else ""
        checks.append(Check(name, True, f"{tname} ({t['node_config'].get('InstanceType')}, "
                                        f"{t['resources'].get('GPU', 0)} GPUs per node{where})"))  # fmt: skip
    return checks, found


def aws_identity(region: str | None) -> Check:
    import boto3

    try:
        sts = boto3.client("sts", region_name=region)
        who = sts.get_caller_identity()
        return Check(
            "AWS credentials", True, f"account {who['Account']} ({who['Arn']}), region {region}"
        )
    except Exception as e:  # noqa: BLE001 - reported
        return Check(
            "AWS credentials", False, f"{type(e).__name__}: {str(e)[:300]}",
            "configure credentials (aws configure, AWS_PROFILE, or an instance role) and the "
            "region (AWS_REGION, and provider.region in infra/aws-spot.yaml)",
        )  # fmt: skip


def quota_checks(cfg: JobConfig, region: str | None, launched: dict[str, dict]) -> list[Check]:
    """The vCPU quota of each node type the launch will ask for (its family, its vCPUs)."""
    import boto3

    out = []
    sq = boto3.client("service-quotas", region_name=region)
    for market, t in launched.items():
        itype = t["node_config"]["InstanceType"]
        need = max(1, cfg.hardware.num_nodes) * int(t["resources"].get("CPU", 1))
        codes = QUOTA_CODES[family(itype)]
        code = codes[market]
        try:
            value = sq.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except Exception as e:  # noqa: BLE001 - reported
            out.append(Check(
                f"{market} vCPU quota ({codes['name']} instances, {code})", False,
                f"could not read it: {type(e).__name__}: {str(e)[:200]}",
                "allow servicequotas:GetServiceQuota, or check the quota in the Service "
                f"Quotas console (EC2, {code}): the job needs {need} vCPUs of {itype}",
            ))  # fmt: skip
            continue
        out.append(quota_check(market, codes["name"], code, float(value), need))
    return out


def store_checks(cfg: JobConfig, env: dict[str, str]) -> list[Check]:
    from orchestrator.storage import resolve
    from orchestrator.storage.durable import open_durable

    storage = resolve.resolve(cfg, "preflight", env)
    places = {"durable store": storage.root}
    if cfg.checkpoint.dir:
        places["checkpoint prefix"] = storage.checkpoint_url
    out = []
    for what, url in places.items():
        store = open_durable(url)
        rel = f".preflight/{uuid.uuid4().hex}"
        try:
            store.write_text(rel, "ok")
            assert store.read_text(rel) == "ok", "read back something else"
            store.delete(rel)
            out.append(Check(f"read/write {what}", True, url))
        except Exception as e:  # noqa: BLE001 - reported
            out.append(Check(
                f"read/write {what}", False, f"{url}: {type(e).__name__}: {str(e)[:300]}",
                "give the nodes' role (and yours) s3:PutObject/GetObject/DeleteObject/ListBucket "
                "on that prefix, and check the bucket name and region",
            ))  # fmt: skip
    return out


def tracking_check(env: dict[str, str]) -> Check:
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return Check("MLflow tracking server", False, f"MLFLOW_TRACKING_URI={uri!r} is not a server",
                     "start one (mlflow server ...) and export MLFLOW_TRACKING_URI=http://host:5000")  # fmt: skip
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
            ok = r.status == 200
        return Check("MLflow tracking server", ok, f"{uri} answers /health")
    except Exception as e:  # noqa: BLE001 - reported
        from orchestrator.tracking.redact import redact

        return Check("MLflow tracking server", False, f"{redact(uri)}: {type(e).__name__}: {e}",
                     "check the server runs and that this machine and the nodes can reach it")  # fmt: skip


ECR = re.compile(
    r"^(?P<account>\d+)\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repo>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>.+))?$"
)


IMAGE_NEEDS = {
    "org.orchestrator.flash-attn": "model.attn_implementation=flash_attention_2",
    "org.orchestrator.bitsandbytes": "model.load_8bit=true",
}
"""Image label -> the setting that needs what it names."""


def image_needs(cfg: JobConfig) -> list[str]:
    """The image labels the job needs set to a version (not "none")."""
    out = []
    if cfg.model.attn_implementation == "flash_attention_2":
        out.append("org.orchestrator.flash-attn")
    if cfg.model.load_8bit:
        out.append("org.orchestrator.bitsandbytes")
    return out


def image_contents_check(image: str, cfg: JobConfig, labels: dict[str, str] | None) -> Check:
    """Pure: does the image hold what the job needs? `labels` are the image's (None: the image
    has none of this project's labels, i.e. it was not built from infra/Dockerfile)."""
    name = "container image contents"
    needs = image_needs(cfg)
    if not needs:
        return Check(name, True, "the job needs no optional CUDA package")
    if labels is None or not any(k.startswith("org.orchestrator.") for k in labels):
        return Check(name, False, f"{image} carries no org.orchestrator.* labels: what it holds "
                     "is unknown", "build it from infra/Dockerfile and push it")  # fmt: skip
    missing = [k for k in needs if labels.get(k, "none") in ("", "none")]
    if missing:
        what = "; ".join(f"{IMAGE_NEEDS[k]} needs {k.split('.')[-1]}" for k in missing)
        return Check(name, False, f"{image}: {what}, which the image was built without",
                     "rebuild without --build-arg FLASH_ATTN_VERSION= (the default installs "
                     "it), or change the setting")  # fmt: skip
    return Check(name, True, ", ".join(f"{k.split('.')[-1]} {labels[k]}" for k in needs))


def manifest_config_digest(manifest: dict) -> str | None:
    """The config blob's digest of an image manifest (None for a manifest list / index, whose
    entries are manifests of their own)."""
    return (manifest.get("config") or {}).get("digest")


def _image_labels(ecr, account: str, repo: str, ref: dict) -> dict[str, str]:
    """The labels of an ECR image: its manifest, then its config blob (linux/amd64 from an
    index)."""
    import json

    types = [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
    got = ecr.batch_get_image(registryId=account, repositoryName=repo, imageIds=[ref],
                              acceptedMediaTypes=types)  # fmt: skip
    manifest = json.loads(got["images"][0]["imageManifest"])
    if manifest_config_digest(manifest) is None:
        (one,) = [m for m in manifest.get("manifests", [])
                  if (m.get("platform") or {}).get("architecture") == "amd64"][:1]  # fmt: skip
        got = ecr.batch_get_image(registryId=account, repositoryName=repo,
                                  imageIds=[{"imageDigest": one["digest"]}],
                                  acceptedMediaTypes=types)  # fmt: skip
        manifest = json.loads(got["images"][0]["imageManifest"])
    url = ecr.get_download_url_for_layer(
        registryId=account, repositoryName=repo, layerDigest=manifest_config_digest(manifest)
    )["downloadUrl"]
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - ECR's presigned https URL
        config = json.loads(r.read())
    return dict((config.get("config") or {}).get("Labels") or {})


def image_checks(image: str, where: str, region: str | None, cfg: JobConfig) -> list[Check]:
    """The image (`where` names the file that sets it) exists; and holds what the job needs
    (when it needs something)."""
    import boto3

    m = ECR.match(image)
    if not m:
        return [Check("container image", False, f"{image!r} is not an ECR image reference",
                     "push infra/Dockerfile's image to ECR and set it in "
                     f"{where} (account.dkr.ecr.region.amazonaws.com/repo:tag)")]  # fmt: skip
    ref = {"imageDigest": m["digest"]} if m["digest"] else {"imageTag": m["tag"] or "latest"}
    try:
        ecr = boto3.client("ecr", region_name=m["region"] or region)
        ecr.describe_images(registryId=m["account"], repositoryName=m["repo"], imageIds=[ref])
    except Exception as e:  # noqa: BLE001 - reported
        return [Check("container image", False, f"{image}: {type(e).__name__}: {str(e)[:200]}",
                     "build and push it: docker build -f infra/Dockerfile -t IMAGE . && "
                     "docker push IMAGE (after aws ecr get-login-password | docker login ...)")]  # fmt: skip
    exists = Check("container image", True, image)
    if not image_needs(cfg):
        return [exists]
    try:
        labels = _image_labels(ecr, m["account"], m["repo"], ref)
    except Exception as e:  # noqa: BLE001 - reported
        return [exists, Check("container image contents", False,
                     f"{image}: could not read its labels: {type(e).__name__}: {str(e)[:200]}",
                     "allow ecr:BatchGetImage and ecr:GetDownloadUrlForLayer")]  # fmt: skip
    return [exists, image_contents_check(image, cfg, labels)]
