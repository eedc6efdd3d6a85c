"""Storage and volume prices per cloud (cost.object_store_usd_per_gb_month by storage.root's
scheme, cost.volume_usd_per_gb_month by the instance's cloud)."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.compose.load import compose
from orchestrator.config.schema import ConfigError, CostConfig
from orchestrator.cost.estimator import storage_prices


def test_the_store_is_priced_by_scheme_and_the_volumes_by_cloud():
    cfg = compose("vicuna", "full", ["storage.root=s3://bucket/runs"])
    assert storage_prices(cfg) == (0.023, 0.08)  # S3 Standard, EBS gp3
    itype = cfg.hardware.instance_type
    cfg.cost.instances[itype] = dataclasses.replace(cfg.cost.instances[itype], cloud="gcp")
    assert storage_prices(cfg) == (0.023, 0.10)  # the checkpoints stay in S3; PD volumes
    cfg.cost.instances[itype] = dataclasses.replace(cfg.cost.instances[itype], cloud="lambda")
    assert storage_prices(cfg)[1] == 0.0  # the instance's own disk, in its hourly price
    # this machine's folder costs nothing; a folder on GPU nodes is kept as S3 would keep it
    assert storage_prices(compose("vicuna", "local"))[0] == 0.0
    assert storage_prices(compose("vicuna", "full"))[0] == 0.023


def test_an_unpriced_cloud_or_store_is_a_clear_error():
    cfg = compose("vicuna", "full")
    with pytest.raises(ConfigError, match=r"cost.instances.x.cloud='azure' has no "
                       r"cost.volume_usd_per_gb_month entry; priced clouds: \['aws', 'local'\]"):  # fmt: skip
        CostConfig(instances={"x": dataclasses.replace(
            cfg.cost.instances[cfg.hardware.instance_type], cloud="azure")})  # fmt: skip
    cfg = compose("vicuna", "full", ["storage.root=s3://bucket/runs"])
    cfg.cost.object_store_usd_per_gb_month.pop("s3")
    with pytest.raises(ConfigError, match=r"no cost.object_store_usd_per_gb_month.s3 price"):
        storage_prices(cfg)
    with pytest.raises(ConfigError, match=r"cost.volume_usd_per_gb_month.aws"):
        CostConfig(volume_usd_per_gb_month={"aws": -1.0})
