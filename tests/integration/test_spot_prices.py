"""Live spot prices through boto3 against a real HTTP EC2 endpoint (moto_server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from orchestrator.compose.load import compose
from orchestrator.cost.prices import apply_live_prices, spot_price

pytestmark = pytest.mark.integration


@pytest.fixture
def moto(monkeypatch, start_moto):
    url, proc = start_moto()
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return proc


def test_live_spot_price_replaces_the_catalog_and_is_cached(moto, tmp_path):
    cache = tmp_path / "spot.json"
    cfg = compose("vicuna", "full")
    catalog_price = cfg.cost.instances["p4de.24xlarge"].spot_per_hour_usd
    note = apply_live_prices(cfg, cache)
    live = cfg.cost.instances["p4de.24xlarge"].spot_per_hour_usd
    assert live != catalog_price and live == pytest.approx(0.00001)  # what moto quotes
    assert "describe_spot_price_history" in note and cache.exists()
    zones = cfg.cost.instances["p4de.24xlarge"].spot_per_hour_usd_by_zone  # each zone's price
    assert zones and all(z.startswith("us-east-1") for z in zones), zones

    moto.kill()
    moto.wait()  # the endpoint is gone: the cached price (with its timestamp) still answers
    cached = spot_price("p4de.24xlarge", "us-east-1", cache)
    assert cached["price"] == pytest.approx(0.00001) and "(cached)" in cached["source"]
    assert cached["zones"] == zones


def test_unreachable_endpoint_falls_back_to_the_catalog_with_a_warning(moto, tmp_path, caplog):
    moto.kill()
    moto.wait()
    cfg = compose("vicuna", "full")
    catalog_price = cfg.cost.instances["p4de.24xlarge"].spot_per_hour_usd
    note = apply_live_prices(cfg, tmp_path / "spot.json")
    assert cfg.cost.instances["p4de.24xlarge"].spot_per_hour_usd == catalog_price
    assert "unavailable" in note and "using the catalog" in caplog.text


def test_no_credentials_means_catalog_prices(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = compose("vicuna", "full")
    assert apply_live_prices(cfg, tmp_path / "spot.json") is None
