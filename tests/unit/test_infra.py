"""Every definition in infra/ is checked: the cluster-launcher YAMLs against Ray's own schema
(ray-schema.json via the autoscaler's validate_config), the KubeRay manifests and the Dockerfile
structurally, and all of them against the price catalog and the autoscale contract (worker
node types offer `spot` or `on_demand`, with `instance_type`/`market` labels the ledger prices)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError
from orchestrator.paths import REPO_ROOT

INFRA = REPO_ROOT / "infra"
CATALOG = compose("vicuna", "full").cost.instances
LAUNCHER_YAMLS = ["aws-spot.yaml", "local-fake.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_cluster_yaml_passes_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(name)
    if cfg["provider"]["type"] in ("fake_multinode", "external"):
        cfg["provider"]["gcs_address"] = "127.0.0.1:6379"  # filled in by cluster-up
        validate_config(cfg)
    else:
        validate_config(prepare_config(cfg))


def test_schema_check_fails_on_a_broken_file():
    """The check has teeth: a fractional resource (Ray wants integers) is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load("aws-spot.yaml")
    cfg["available_node_types"]["p4de_spot"]["resources"]["spot"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_node_types_follow_the_autoscale_and_pricing_contract(name):
    cfg = _load(name)
    head = cfg["head_node_type"]
    assert cfg["idle_timeout_minutes"] > 0
    markets = set()
    for tname, t in cfg["available_node_types"].items():
        res, labels = t["resources"], t.get("labels", {})
        offered = {"spot", "on_demand"} & set(res)
        if tname == head:
            assert not offered, "training workers must never land on the head"
            continue
        assert len(offered) == 1, tname
        market = offered.pop()
        markets.add(market)
        assert labels.get("market") == market, tname
        assert labels.get("instance_type") in CATALOG, (tname, labels)
        price = CATALOG[labels["instance_type"]]
        if "GPU" in res:  # one unit of the market resource per GPU
            assert res[market] == res["GPU"] == price.num_gpus, tname
        assert t.get("min_workers", 0) == 0, "scale from zero"
        spot_opts = t["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
        if cfg["provider"]["type"] == "aws":
            assert (spot_opts == "spot") == (market == "spot"), tname
            assert t["node_config"]["InstanceType"] == labels["instance_type"]
    assert markets == {"spot", "on_demand"}, "spot node types and an on-demand fallback"


def test_aws_spot_covers_the_gpu_families():
    types = {
        t["node_config"]["InstanceType"]
        for t in _load("aws-spot.yaml")["available_node_types"].values()
    }
    for family in ("p4d.", "p4de.", "p5.", "g5.", "g6."):
        assert any(t.startswith(family) for t in types), family
    head = _load("aws-spot.yaml")["available_node_types"]["head"]["node_config"]
    assert "InstanceMarketOptions" not in head, "the head is on-demand"
    assert "IamInstanceProfile" in head, "S3 checkpoints need an instance profile"


def _k8s(name: str) -> list[dict]:
    return list(yaml.safe_load_all((INFRA / "kuberay" / name).read_text()))


def _ray_resources(group: dict) -> dict:
    return json.loads(json.loads(group["rayStartParams"]["resources"]))


def _labels(group: dict) -> dict:
    return dict(kv.split("=") for kv in group["rayStartParams"]["labels"].split(","))


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name):
    (doc,) = [d for d in _k8s(name) if d["kind"] in ("RayCluster", "RayJob")]
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert doc["kind"] in ("RayCluster", "RayJob")
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "on-demand"
    markets = set()
    for g in spec["workerGroupSpecs"]:
        res, labels = _ray_resources(g), _labels(g)
        (market,) = {"spot", "on_demand"} & set(res)
        markets.add(market)
        assert labels["market"] == market and labels["instance_type"] in CATALOG
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        pod = g["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 60, "time for the emergency checkpoint"
        capacity = pod["nodeSelector"]["karpenter.sh/capacity-type"]
        assert capacity == ("spot" if market == "spot" else "on-demand")
        if market == "spot":
            assert any(t.get("value") == "spot" for t in pod["tolerations"])
        gpus = int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert res[market] == gpus == CATALOG[labels["instance_type"]].num_gpus
    assert markets == {"spot", "on_demand"}
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        assert doc["spec"]["entrypoint"].startswith("python -m orchestrator launch")
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
        assert env["ORCHESTRATOR_STORAGE_ROOT"].startswith("s3://")  # checkpoints go under it


def test_dockerfile_pins_what_the_project_pins():
    import ray

    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)", text, re.M).group(1)
    assert base.startswith(ray.__version__ + "-py311"), base
    make = (REPO_ROOT / "Makefile").read_text()
    for pin in re.findall(r"(torch==\S+|deepspeed==\S+)", make):
        assert pin in text, pin
    assert "pip install --no-cache-dir -e . " in text and "[dev]" not in text  # no dev extras
    # Nothing fails quietly: a failed install fails the build (no `|| echo`), flash-attn is left
    # out only by an explicit build argument, and the labels say what the image holds.
    assert "||" not in text
    assert re.search(r"^ARG FLASH_ATTN_VERSION=\S+", text, re.M)
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (bnb,) = [d for d in deps if d.startswith("bitsandbytes==")]
    assert f'org.orchestrator.bitsandbytes="{bnb.split("==")[1]}"' in text
    assert 'org.orchestrator.flash-attn="${FLASH_ATTN_VERSION:-none}"' in text


def test_dockerignore_keeps_environments_outputs_and_secrets_out():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs/", "mlflow.db", ".env", "**/*.pem", ".aws/"):
        assert entry in ignored, entry


def test_multi_node_gpu_types_have_efa_and_a_placement_group():
    """Every 8-GPU node type (the ones multi-node jobs span) has one EFA interface per network
    card, a cluster placement group, and EFA devices in its container, keeping the scratch."""
    aws = _load("aws-spot.yaml")
    cards = {"p4d.24xlarge": 4, "p4de.24xlarge": 4, "p5.48xlarge": 32}
    seen = set()
    for name, t in aws["available_node_types"].items():
        itype = t["node_config"]["InstanceType"]
        if itype not in cards:
            continue
        seen.add(itype)
        nics = t["node_config"]["NetworkInterfaces"]
        assert [n["NetworkCardIndex"] for n in nics] == list(range(cards[itype])), name
        assert all(n["InterfaceType"] == "efa" and n["SubnetId"] and n["Groups"] for n in nics)
        assert [n["DeviceIndex"] for n in nics][:2] == [0, 1], name
        assert t["node_config"]["Placement"]["GroupName"], name
        opts = " ".join(t["docker"]["worker_run_options"])
        assert "/dev/infiniband" in opts and "FI_PROVIDER=efa" in opts, name
        assert "ORCHESTRATOR_SCRATCH=/scratch" in opts, name  # replaces the global options
    assert seen == set(cards)
    assert aws["provider"]["use_internal_ips"] is True  # multi-NIC instances get no public IP


def test_unknown_cluster_name_is_a_clear_error():
    from orchestrator.launch.named_clusters import cluster_config

    with pytest.raises(
        ConfigError, match=r"no cluster named 'gcp'.*known: \['aws-spot', 'kuberay', 'local-fake'\]"
    ):
        cluster_config("gcp")


def test_autoscale_bundles_and_modes(monkeypatch):
    from orchestrator.launch import autoscale

    gpu = compose("vicuna", "full")
    want = {"CPU": 8, "spot": 1, "GPU": 1, "accelerator_type:A100-80G": 0.001,
            "instance:p4de.24xlarge": 0.001}  # fmt: skip
    assert autoscale.bundles(gpu, "spot") == [want] * 8
    local = compose("vicuna", "local")
    assert (
        autoscale.bundles(local, "on_demand")
        == [{"CPU": 1, "on_demand": 1, "instance:local-2vcpu": 0.001}] * 2
    )
    monkeypatch.delenv("ORCHESTRATOR_CLUSTER", raising=False)
    assert not autoscale.enabled(local)
    monkeypatch.setenv("ORCHESTRATOR_CLUSTER", "local-fake")
    assert autoscale.enabled(local)
    assert not autoscale.enabled(compose("vicuna", "local", ["hardware.autoscale=false"]))
    with pytest.raises(ConfigError, match="hardware.spot_fallback='always'"):
        compose("vicuna", "local", ["hardware.spot_fallback=always"])


def test_working_dir_excludes_keep_the_upload_small():
    """What Ray would upload of this checkout (its own PathSpec matcher on the launcher's
    excludes): the allow-listed code and data, a few MiB; nothing heavy or secret-looking."""
    from ray._private.thirdparty.pathspec import PathSpec

    from orchestrator.launch.named_clusters import SHIPPED, working_dir_excludes

    spec = PathSpec.from_lines("gitwildmatch", working_dir_excludes())

    def shipped(p: Path) -> bool:  # Ray prunes an excluded folder with everything under it
        rel = p.relative_to(REPO_ROOT)
        return not any(spec.match_file(str(Path(*rel.parts[: i + 1])))
                       for i in range(len(rel.parts)))  # fmt: skip

    files = [p for p in REPO_ROOT.rglob("*") if p.is_file() and shipped(p)]
    assert {p.relative_to(REPO_ROOT).parts[0] for p in files} <= set(SHIPPED)
    assert REPO_ROOT / "orchestrator" / "data" / "tokenizer.py" in files
    assert not any(p.relative_to(REPO_ROOT).parts[0] in (".venv", ".git", "runs") for p in files)
    assert sum(p.stat().st_size for p in files) < 100 * 2**20  # Ray's limit is 500 MiB
    assert Path(INFRA / "README.md").exists()


def test_every_cluster_definition_follows_the_storage_contract():
    """Nodes share no disk (docs/storage.md): every definition points all nodes at an S3 durable
    store and a tracking server, and gives GPU nodes node-local scratch."""
    aws = _load("aws-spot.yaml")
    opts = " ".join(aws["docker"]["run_options"])
    assert re.search(r"ORCHESTRATOR_STORAGE_ROOT=s3://\S+", opts)
    assert re.search(r"MLFLOW_TRACKING_URI=https?://\S+", opts)
    workers = " ".join(aws["docker"]["worker_run_options"])
    assert "ORCHESTRATOR_SCRATCH=/scratch" in workers and "/opt/dlami/nvme:/scratch" in workers

    docs = list(yaml.safe_load_all((INFRA / "kuberay" / "raycluster.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["ORCHESTRATOR_STORAGE_ROOT"].startswith("s3://")
    assert config["MLFLOW_TRACKING_URI"].startswith("http")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")["spec"]
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        c = pod["containers"][0]
        assert {"name": "ORCHESTRATOR_SCRATCH", "value": "/scratch"} in c["env"], group["groupName"]
        assert any(v["name"] == "scratch" for v in pod["volumes"])
        assert c["envFrom"] == [{"configMapRef": {"name": "orchestrator-storage"}}]

    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["ORCHESTRATOR_STORAGE_ROOT"].startswith("s3://")
    assert (
        env["MLFLOW_TRACKING_URI"].startswith("http")
        and "checkpoint.dir=/" not in job["spec"]["entrypoint"]
    )
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert any(v["name"] == "scratch" for v in pod["volumes"]), group["groupName"]


def test_every_gpu_node_type_carries_its_gpu_type():
    """Jobs ask for `accelerator_type:<GPU>` (ScalingConfig.accelerator_type and the autoscaler
    bundles): every GPU node type must offer the one its instance has, and only that one."""
    gpus = compose("vicuna", "full").cost.gpus
    aws = _load("aws-spot.yaml")
    checked = 0
    for name, t in aws["available_node_types"].items():
        res, labels = t["resources"], t.get("labels", {})
        if not res.get("GPU"):
            assert not any(k.startswith("accelerator_type:") for k in res), name
            continue
        want = f"accelerator_type:{gpus[CATALOG[labels['instance_type']].gpu].ray_type}"
        assert [k for k in res if k.startswith("accelerator_type:")] == [want], name
        assert res[want] == 1
        checked += 1
    for f in ("raycluster.yaml", "rayjob.yaml"):
        (doc,) = [d for d in _k8s(f) if d["kind"] in ("RayCluster", "RayJob")]
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        for g in spec["workerGroupSpecs"]:
            want = f"accelerator_type:{gpus[CATALOG[_labels(g)['instance_type']].gpu].ray_type}"
            assert _ray_resources(g).get(want) == 1, (f, g["groupName"])
            checked += 1
    assert checked >= 12


def test_a_job_asks_for_its_gpu_type():
    from orchestrator.launch import autoscale
    from orchestrator.launch.supervise import ray_accelerator as _ray_accelerator

    cfg = compose("dolly", "full")
    assert _ray_accelerator(cfg) == "A100-40G"
    (one, *_) = autoscale.bundles(cfg, "spot")
    assert one["accelerator_type:A100-40G"] > 0 and one["GPU"] == 1
    assert one["instance:p4d.24xlarge"] > 0  # the node type priced, not another A100-40GB one
    assert _ray_accelerator(compose("vicuna", "local")) is None


def _full_scale_configs():
    """Every full-scale config a job runs (each stage of a pipeline) and each alternative it
    may fail over to, and every GPU hardware block in conf/hardware/ applied to vicuna (a block
    a user may pick)."""
    from orchestrator.compose.load import job_configs
    from orchestrator.launch.failover import alternatives
    from orchestrator.paths import CONF_DIR, JOBS_DIR

    for path in sorted(JOBS_DIR.glob("*.yaml")):
        for stage, cfg in job_configs(path.stem, "full").items():
            yield f"{path.stem}{':' + stage if stage else ''}", cfg
            for alt in alternatives(cfg):  # the node types it may fail over to
                if alt.cfg is not None:
                    yield f"{path.stem}{':' + stage if stage else ''} -> {alt.name}", alt.cfg
    for block in sorted((CONF_DIR / "hardware").glob("*.yaml")):
        if block.stem != "local_cpu":
            yield f"hardware={block.stem}", compose("vicuna", "full", [f"hardware={block.stem}"])


def test_every_full_scale_hardware_block_has_its_node_type_in_every_market():
    """The node type the autoscaler launches is the one the projection priced: same instance
    label, same GPUs per node (baize's one A100 once had only an 8-GPU p4d type), in spot and
    in the on-demand fallback."""
    from orchestrator.launch.autoscale import markets, node_type_for

    types = _load("aws-spot.yaml")["available_node_types"]
    checked = 0
    for name, cfg in _full_scale_configs():
        assert cfg.hardware.accelerator != "cpu", name
        assert cfg.cost.instances[cfg.hardware.instance_type].cloud == "aws", name
        for market in markets(cfg):
            tname, t = node_type_for(types, cfg, market)  # raises naming what is missing
            assert t["node_config"]["InstanceType"] == cfg.hardware.instance_type, (name, tname)
            checked += 1
    assert checked >= 30


def test_node_type_for_refuses_a_node_shape_the_job_did_not_price():
    from orchestrator.launch.autoscale import node_type_for

    cfg = compose("baize", "full")
    eight = {"p4d_spot": {"resources": {"GPU": 8, "spot": 8},
                          "labels": {"instance_type": cfg.hardware.instance_type}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"1 GPUs per node.*p4d_spot"):
        node_type_for(eight, cfg, "spot")


def test_every_gpu_node_type_has_its_root_volume_and_the_caches_on_scratch():
    aws = _load("aws-spot.yaml")
    for name, t in aws["available_node_types"].items():
        (root,) = t["node_config"]["BlockDeviceMappings"]
        size = root["Ebs"]["VolumeSize"]
        # the bill prices the volume the node really has
        assert size == CATALOG[t["labels"]["instance_type"]].ebs_gb, name
        if t["resources"].get("GPU"):
            opts = (t.get("docker") or {}).get("worker_run_options") or aws["docker"][
                "worker_run_options"
            ]
            assert "--env HF_HOME=/scratch/hf" in opts, name  # 13-26 GB bases off the root
            assert "--env ORCHESTRATOR_SCRATCH=/scratch" in opts, name


def test_preflight_names_the_node_type_it_will_launch_and_its_quota_family():
    from orchestrator.launch.preflight import QUOTA_CODES, family, node_type_checks

    types = _load("aws-spot.yaml")["available_node_types"]
    checks, launched = node_type_checks(types, compose("baize", "full"))
    assert all(c.ok for c in checks) and set(launched) == {"spot", "on_demand"}
    itype = launched["spot"]["node_config"]["InstanceType"]
    assert itype == "g6e.xlarge" and QUOTA_CODES[family(itype)]["name"] == "G and VT"
    bad, none = node_type_checks({}, compose("baize", "full"))
    assert not none and not any(c.ok for c in bad) and len(bad) == 2
    spot, _ = node_type_checks(types, compose("vicuna", "full"))  # the zones it will try
    assert "zones us-east-1a, us-east-1b in this order" in spot[0].detail, spot[0]


def test_preflight_says_which_checks_do_not_apply_to_a_cluster():
    from orchestrator.launch.preflight import AWS_ONLY, Check, not_applicable, summary

    na = not_applicable("fake_multinode")
    assert [c.name for c in na] == list(AWS_ONLY)
    assert all(c.line().startswith("[n/a ]") and "fake_multinode" in c.line() for c in na)
    ran = [Check("storage", True, "s3://b"), Check("tracking", False, "down", "start one")]
    text = summary(ran + na)
    assert text.startswith("1 of 2 checks passed, 3 did not apply") and "fix the 1" in text
    assert summary([Check("storage", True, "ok")]) == "1 of 1 checks passed"


@pytest.mark.parametrize("name", ["aws-spot.yaml", "local-fake.yaml"])
def test_every_worker_node_type_advertises_its_instance_type(name):
    """Workers ask for `instance:<type>` (autoscale.bundles): each worker node type offers the
    one its `instance_type` label names, so the autoscaler launches the type priced (or the
    alternative failed over to) and nothing else."""
    types = _load(name)["available_node_types"]
    workers = {n: t for n, t in types.items() if t.get("labels", {}).get("market")
               and ("spot" in t["resources"] or "on_demand" in t["resources"])}  # fmt: skip
    assert len(workers) >= 3
    for n, t in workers.items():
        assert t["resources"].get(f"instance:{t['labels']['instance_type']}", 0) >= 1, n


def test_multi_node_spot_types_come_per_zone_each_with_its_subnet_and_placement_group():
    """One node type per (instance type, market, zone) for the EFA types, each with its own
    subnet and cluster placement group (one placement group is one zone), advertising its zone
    (`zone:<az>`, label `zone`); the launcher tries the zones in the file's order and pins a
    job's workers to the one it got."""
    from orchestrator.compose.load import compose
    from orchestrator.launch.autoscale import bundles, zones_for

    aws = _load("aws-spot.yaml")
    types = aws["available_node_types"]
    efa = {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"}
    by_kind: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for name, t in types.items():
        itype = t["node_config"]["InstanceType"]
        if itype not in efa:
            continue
        zone = t["labels"].get("zone")
        assert zone and t["resources"].get(f"zone:{zone}") == 1, name
        market = t["labels"]["market"]
        nc = t["node_config"]
        by_kind.setdefault((itype, market), []).append(
            (zone, nc["NetworkInterfaces"][0]["SubnetId"], nc["Placement"]["GroupName"])
        )
    for kind, zones in by_kind.items():
        for i in range(3):  # zones, subnets, placement groups: all distinct
            assert len({z[i] for z in zones}) == len(zones), (kind, zones)
    assert len(by_kind[("p4de.24xlarge", "spot")]) >= 2  # a second zone to fail over to
    cfg = compose("vicuna", "full")
    assert zones_for(types, cfg, "spot") == ["us-east-1a", "us-east-1b"]
    assert zones_for(types, cfg, "on_demand") == ["us-east-1a"]
    assert zones_for({}, cfg, "spot") == [None]  # a cluster without zones: the autoscaler picks
    one = bundles(cfg, "spot", "us-east-1b")[0]
    assert one["zone:us-east-1b"] == 0.001 and one["instance:p4de.24xlarge"] == 0.001
    assert not any(k.startswith("zone:") for k in bundles(cfg, "spot")[0])
    # spot priced by zone (live prices fill it): the cheaper zone first, and nodes priced there
    from orchestrator.cost.estimator import price_per_hour

    price = cfg.cost.instances["p4de.24xlarge"]
    price.spot_per_hour_usd_by_zone = {"us-east-1b": 9.5, "us-east-1a": 11.0}
    assert zones_for(types, cfg, "spot") == ["us-east-1b", "us-east-1a"]
    assert price_per_hour(price, "spot", "us-east-1a") == 11.0
    assert price_per_hour(price, "spot", "us-east-1c") == price.spot_per_hour_usd  # not listed
    assert price_per_hour(price, "on_demand", "us-east-1b") == price.on_demand_per_hour_usd


def test_a_submitted_launch_learns_the_node_shapes_and_zones_through_its_env(monkeypatch):
    """infra/ is not uploaded with a job: the submission passes the node types' resources and
    labels (no node_config: no subnets, images or profiles) for the launcher to pick zones."""
    import json

    from orchestrator.launch.autoscale import cluster_node_types
    from orchestrator.launch.backends import job_env
    from orchestrator.launch.cluster_state import NODE_TYPES_ENV

    env = job_env("aws-spot")
    shapes = json.loads(env[NODE_TYPES_ENV])
    assert shapes["p4de_spot_b"]["labels"]["zone"] == "us-east-1b"
    assert all(set(t) == {"resources", "labels"} for t in shapes.values())
    assert "subnet-" not in env[NODE_TYPES_ENV] and NODE_TYPES_ENV not in job_env("kuberay")
    monkeypatch.setenv(NODE_TYPES_ENV, env[NODE_TYPES_ENV])
    monkeypatch.delenv("ORCHESTRATOR_CLUSTER", raising=False)
    assert cluster_node_types() == shapes
    monkeypatch.setenv(NODE_TYPES_ENV, "[not json")
    assert cluster_node_types() == {}


def test_the_bill_knows_the_clusters_idle_timeout_and_the_hardware_agrees():
    """The launcher bills the nodes it leaves up until the cluster's idle timeout: a
    submission passes it ($ORCHESTRATOR_IDLE_TIMEOUT_S), and every GPU hardware block's
    scale_down_s (what the estimator projects) is aws-spot's idle timeout."""
    import yaml

    from orchestrator.launch.backends import job_env
    from orchestrator.launch.cluster_state import IDLE_TIMEOUT_ENV

    spot = yaml.safe_load((REPO_ROOT / "infra" / "aws-spot.yaml").read_text())
    assert job_env("aws-spot")[IDLE_TIMEOUT_ENV] == f"{60 * spot['idle_timeout_minutes']:g}"
    assert job_env("local-fake")[IDLE_TIMEOUT_ENV] == "30"
    kuberay = [d for d in _k8s("raycluster.yaml") if d["kind"] == "RayCluster"][0]["spec"]
    assert job_env("kuberay")[IDLE_TIMEOUT_ENV] == (
        f"{kuberay['autoscalerOptions']['idleTimeoutSeconds']:g}"
    )
    job = [d for d in _k8s("rayjob.yaml") if d["kind"] == "RayJob"][0]["spec"]
    env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]  # a RayJob is not submitted by us
    assert (
        env[IDLE_TIMEOUT_ENV]
        == f"{job['rayClusterSpec']['autoscalerOptions']['idleTimeoutSeconds']:g}"
    )
    for path in sorted((REPO_ROOT / "conf" / "hardware").glob("*.yaml")):
        hw = yaml.safe_load(path.read_text())
        if hw.get("gpus_per_worker", 0) > 0:
            assert hw.get("scale_down_s") == 60 * spot["idle_timeout_minutes"], path.name
