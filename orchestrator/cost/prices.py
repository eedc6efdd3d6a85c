"""Live AWS spot prices (describe_spot_price_history), cached, with the catalog as fallback.

Spot prices move; the catalog's are a snapshot. When AWS credentials are present, a launch or an
estimate asks EC2 for the current spot price of the job's instance type in its region (each
availability zone's newest price, which prices the nodes of that zone, and their mean, which
prices the projection), caches it for `ttl_s` with a timestamp, and
falls back to the catalog with a warning when the call fails. The endpoint follows boto3's own
settings (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_EC2), which is how tests point it at moto_server.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from orchestrator.config.schema import JobConfig

log = logging.getLogger(__name__)

DEFAULT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "orchestrator"
    / "spot_prices.json"
)


def _have_credentials() -> bool:
    try:
        import boto3

        return boto3.Session().get_credentials() is not None
    except Exception:  # noqa: BLE001
        return False


def fetch_spot_price(instance_type: str, region: str) -> dict[str, float]:
    """Current spot $/h in each AZ: its newest Linux price. Raises on any failure."""
    import boto3
    from botocore.config import Config

    ec2 = boto3.client(
        "ec2",
        region_name=region,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=10),
    )
    resp = ec2.describe_spot_price_history(
        InstanceTypes=[instance_type],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=time.time() - 3 * 3600,
        MaxResults=100,
    )
    newest: dict[str, tuple] = {}
    for row in resp.get("SpotPriceHistory", []):
        az = row["AvailabilityZone"]
        if az not in newest or row["Timestamp"] > newest[az][0]:
            newest[az] = (row["Timestamp"], float(row["SpotPrice"]))
    if not newest:
        raise LookupError(f"no spot price history for {instance_type} in {region}")
    return {az: price for az, (_, price) in sorted(newest.items())}


def spot_price(
    instance_type: str, region: str, cache: Path = DEFAULT_CACHE, ttl_s: float = 3600.0
) -> dict:
    """{"price" (the zones' mean), "zones" ({zone: price}), "fetched_at", "source"} from the
    cache if fresh, else from EC2 (then cached)."""
    key = f"{region}/{instance_type}"
    data = json.loads(cache.read_text()) if cache.exists() else {}
    hit = data.get(key)
    if hit and "zones" in hit and time.time() - hit["fetched_at"] < ttl_s:
        return {**hit, "source": f"{hit['source']} (cached)"}
    zones = fetch_spot_price(instance_type, region)
    entry = {
        "price": sum(zones.values()) / len(zones),
        "zones": zones,
        "fetched_at": time.time(),
        "source": f"AWS describe_spot_price_history {region} {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}",
    }
    data[key] = entry
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(cache)
    return entry


def apply_live_prices(cfg: JobConfig, cache: Path = DEFAULT_CACHE) -> str | None:
    """Replace the job's spot price with the live one when possible. Returns a note for the user."""
    inst = cfg.cost.instances[cfg.hardware.instance_type]
    if not cfg.cost.live_spot_prices or inst.cloud != "aws" or not inst.region or not inst.num_gpus:
        return None
    if not _have_credentials():
        return None
    try:
        live = spot_price(cfg.hardware.instance_type, inst.region, cache)
    except Exception as e:  # noqa: BLE001 - any failure: the catalog price stands
        msg = (
            f"live spot price of {cfg.hardware.instance_type} unavailable ({str(e).splitlines()[0][:160]}); "
            f"using the catalog's ${inst.spot_per_hour_usd}/h ({inst.source})"
        )
        log.warning(msg)
        return msg
    inst.spot_per_hour_usd = live["price"]
    inst.spot_per_hour_usd_by_zone = dict(live["zones"])
    inst.source = live["source"]
    zones = ", ".join(f"{z} ${p:.4f}" for z, p in live["zones"].items())
    return (
        f"spot price of {cfg.hardware.instance_type}: ${live['price']:.4f}/h ({zones}) from "
        f"{live['source']}"
    )
