"""Ask an autoscaling Ray cluster for a job's workers, fall back from spot, and let go after.

On a named cluster (infra/, `make launch cluster=...`), worker node types advertise a `spot` or
`on_demand` resource (one unit per GPU, or per node on CPU clusters). The launcher:

1. asks the autoscaler for the job's workers up front, as bundles `[{CPU, GPU, <market>:
   units}] * num_workers`, so every node is requested at once and before training starts;
2. waits until the cluster holds them (progress printed), at most `hardware.spot_wait_s`,
   and while it waits asks the capacity policy (cost/capacity.py) whether waiting still
   beats buying on demand by its expected cost and the job's `budget.deadline_hours`;
3. if spot capacity did not come, or the policy says on-demand meets a deadline the wait would
   miss, and `hardware.spot_fallback: on_demand`, asks for the same workers on `on_demand`
   nodes instead, and says why in the bill (`market_fallback`, with the policy's numbers);
4. pins the training workers to the granted market (`resources_per_worker`), so a spot job
   never lands on on-demand nodes by accident and the ledger prices what really ran;
5. hands the request over to Ray Train when training starts: Train registers the same workers
   with the cluster's AutoscalingCoordinator for as long as it runs (and asks again for a
   replacement after a preemption), so the launcher withdraws its own request right before each
   `fit()` (two live requests for the same workers would make the autoscaler launch twice the
   nodes); and withdraws it in any case when the launch ends, so idle nodes are terminated after
   the cluster's idle timeout.

Requests go through the same AutoscalingCoordinator actor Ray Train and Ray Data use, which
merges every requester's bundles and writes them to the autoscaler. A plain
`ray.autoscaler.sdk.request_resources` call would not survive: the coordinator rewrites the
cluster's whole request every 20 s with what *it* holds, erasing anything set beside it (this
lost the on-demand fallback request of a second job on the fake cluster). The request expires
by itself 180 s after its last renewal ($ORCHESTRATOR_REQUEST_EXPIRE_S), so a launcher that dies
cannot hold nodes forever (`scale_to_zero_bound_s`: Ray Train's own request lasts as long).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.config.schema import JobConfig
from orchestrator.cost import capacity
from orchestrator.cost.estimator import node_prices, price_per_hour


@dataclass(frozen=True)
class Need:
    """What the capacity policy weighs while the launcher waits for spot workers."""

    steps_left: int
    step_s: float
    spot_usd_per_hour: float
    on_demand_usd_per_hour: float
    head_usd_per_hour: float
    prior_wait_s: float
    """The catalog's expected wait for spot capacity (cost.overheads.spot_capacity_wait_s)."""
    on_demand_start_s: float
    time_left_s: float | None = None
    budget_left_usd: float | None = None
    nodes: int = 1
    restart_s: float = 0.0
    """Workers restarting on nodes that are up (cost.overheads.restart_s)."""
    nodes_have: int | None = None
    """Elastic, after a node is lost: the nodes the run could go on with now (a SHRINK
    option: on these until the missing capacity is expected back, then a restart at full
    size). None: not elastic, or nothing lost."""
    on_demand: bool = True
    """Whether on-demand nodes are an option (hardware.spot_fallback)."""
    switches: tuple[tuple[str, float, float], ...] = ()
    """(hardware block, spot $/h of its workers, seconds a step there) of each alternative
    (hardware.alternatives): another node type, whose capacity is as unknown as this one's
    (its expected wait the catalog's prior; the wait for this type grows with the waiting)."""

    def situation(self, waited_s: float) -> capacity.Situation:
        wait_s = capacity.expected_wait_s(self.prior_wait_s, waited_s)
        full = f"spot x {self.nodes} node{'s' if self.nodes > 1 else ''}"
        k = self.nodes_have
        lost = k is not None and 0 < k < self.nodes
        per_node = self.spot_usd_per_hour / self.nodes
        # After a loss the nodes left are up: idle while they wait for the replacement.
        idle = per_node * k if lost and k is not None else 0.0
        options = [capacity.Option(capacity.Move.WAIT, full, self.spot_usd_per_hour,
                                   self.step_s, wait_s, delay_usd_per_hour=idle)]  # fmt: skip
        if self.on_demand:
            options.append(capacity.Option(capacity.Move.ON_DEMAND, "on-demand",
                                           self.on_demand_usd_per_hour, self.step_s,
                                           self.on_demand_start_s))  # fmt: skip
        for name, usd_per_hour, step_s in self.switches:
            options.append(capacity.Option(capacity.Move.SWITCH, switch_label(name), usd_per_hour,
                                           step_s, self.prior_wait_s))  # fmt: skip
        if lost and k is not None:  # on the nodes left until the capacity is back, then grow
            grown = capacity.Option(capacity.Move.WAIT, full, self.spot_usd_per_hour,
                                    self.step_s, self.restart_s)  # fmt: skip
            options.append(capacity.Option(
                capacity.Move.SHRINK, f"spot x {k} of {self.nodes} nodes", per_node * k,
                self.step_s * self.nodes / k, self.restart_s, delay_usd_per_hour=per_node * k,
                then=grown, then_after_s=wait_s,
            ))  # fmt: skip
        return capacity.Situation(self.steps_left, tuple(options), self.head_usd_per_hour,
                                  self.time_left_s, self.budget_left_usd)  # fmt: skip


def switch_label(block: str) -> str:
    return f"{block} spot"


def need_for(cfg: JobConfig, steps_left: int, step_s: float, spent_usd: float,
             spent_hours: float, alternative_step_s: dict[str, float] | None = None,
             ) -> Need | None:  # fmt: skip
    """The policy's inputs for this job from its projection (steps left, seconds a step), the
    catalog's prices and what the run has spent (dollars, cluster hours), and each alternative
    node type's projected seconds a step (`alternative_step_s`, by hardware block); None when
    the catalog has no spot price for its instance type (waiting cannot be priced: the wait is
    `hardware.spot_wait_s`, as configured)."""
    hw, cm, o = cfg.hardware, cfg.cost, cfg.cost.overheads
    price = cm.instances[hw.instance_type]
    nodes, on_demand_usd, spot_usd = node_prices(cfg)  # as the estimate prices them
    if spot_usd is None:
        return None
    head = cm.instances[hw.head_instance_type] if hw.head_instance_type else None
    b = cfg.budget
    return Need(
        steps_left=steps_left, step_s=step_s,
        spot_usd_per_hour=spot_usd,
        on_demand_usd_per_hour=on_demand_usd,
        head_usd_per_hour=head.on_demand_per_hour_usd if head else 0.0,
        prior_wait_s=o.spot_capacity_wait_s,
        on_demand_start_s=price.startup_s if price.startup_s is not None else o.startup_s,
        time_left_s=None if b.deadline_hours is None else (b.deadline_hours - spent_hours) * 3600,
        budget_left_usd=None if b.max_usd is None else b.max_usd - spent_usd,
        nodes=nodes, restart_s=o.restart_s,
        on_demand=hw.market == "spot" and hw.spot_fallback == "on_demand",
        switches=_switches(cfg, alternative_step_s or {}),
    )  # fmt: skip


def _switches(cfg: JobConfig, step_s: dict[str, float]) -> tuple[tuple[str, float, float], ...]:
    """The alternatives the policy can price: a spot price in the catalog and a step time."""
    from orchestrator.launch.failover import alternatives

    out = []
    for a in alternatives(cfg) if step_s else []:
        price = a.cfg.cost.instances[a.cfg.hardware.instance_type] if a.cfg else None
        if price is None or price.spot_per_hour_usd is None or not step_s.get(a.name):
            continue
        assert a.cfg is not None
        usd = price.spot_per_hour_usd * max(1, a.cfg.hardware.num_nodes)
        out.append((a.name, usd, step_s[a.name]))
    return tuple(out)


@dataclass
class Grant:
    market: str
    """The market the workers run in (spot, or on_demand after a fallback)."""
    resource: str
    units_per_worker: int
    waited_s: float
    fallback_note: str | None = None
    """Why the workers are not where the job asked (another market or node type), for the bill."""
    hardware: str | None = None
    """The block of `hardware.alternatives` it failed over to (None: the job's own)."""
    zone: str | None = None
    """The zone its nodes are in, when the cluster's node types name zones (infra/aws-spot.yaml
    has one node type per instance type and zone): the workers are pinned to it."""

    def as_dict(self) -> dict:
        return asdict(self)


def enabled(cfg: JobConfig) -> bool:
    if cfg.hardware.autoscale is not None:
        return cfg.hardware.autoscale
    return bool(os.environ.get("ORCHESTRATOR_CLUSTER"))


def bundles(cfg: JobConfig, market: str, zone: str | None = None) -> list[dict[str, float]]:
    hw = cfg.hardware
    units = max(1, hw.gpus_per_worker)
    one = {"CPU": hw.cpus_per_worker, market: units}
    if hw.gpus_per_worker:
        one["GPU"] = hw.gpus_per_worker
        gpu = cfg.cost.gpus.get(hw.accelerator)
        if gpu is not None and gpu.ray_type:  # the node type that has this GPU, no other
            one[f"accelerator_type:{gpu.ray_type}"] = 0.001
    one[instance_resource(cfg)] = 0.001  # the node type priced, not another with the same GPU
    if zone is not None:  # every node of the job in one zone (EFA: one placement group)
        one[zone_resource(zone)] = 0.001
    return [dict(one) for _ in range(hw.num_workers)]


def zone_resource(zone: str) -> str:
    """The resource every node type of a zone advertises (infra/aws-spot.yaml)."""
    return f"zone:{zone}"


def zones_for(node_types: dict[str, Any], cfg: JobConfig, market: str) -> list[str | None]:
    """Pure: the zones of the node types that would run the job's workers in `market`, the
    cheapest first where the catalog prices spot by zone, else in the cluster file's order (its
    preference); [None] when they name none (the autoscaler picks)."""
    hw = cfg.hardware
    gpus_per_node = hw.num_workers * hw.gpus_per_worker // max(1, hw.num_nodes)
    zones = []
    for t in node_types.values():
        res, labels = t.get("resources", {}), t.get("labels", {})
        if (market in res and labels.get("instance_type") == hw.instance_type
                and res.get("GPU", 0) == gpus_per_node and labels.get("zone")):  # fmt: skip
            zones.append(labels["zone"])
    price = cfg.cost.instances[hw.instance_type]
    ordered = sorted(dict.fromkeys(zones), key=lambda z: price_per_hour(price, market, z))
    return list(ordered) or [None]


def cluster_node_types() -> dict[str, Any]:
    """The shapes (resources, labels) of the node types of the cluster this launch runs on:
    from $ORCHESTRATOR_NODE_TYPES (set by the submission: infra/ is not uploaded), else from
    $ORCHESTRATOR_CLUSTER's file; {} when unknown (KubeRay, a plain Ray address)."""
    import json

    import yaml

    from orchestrator.launch.cluster_state import NODE_TYPES_ENV, cluster_config, node_type_shapes

    raw = os.environ.get(NODE_TYPES_ENV)
    if raw:
        try:
            types = json.loads(raw)
        except ValueError:
            types = None
        if isinstance(types, dict):
            return types
        print(f"warning: ${NODE_TYPES_ENV} is not a JSON object; zones not used", flush=True)
        return {}
    name = os.environ.get("ORCHESTRATOR_CLUSTER")
    try:
        path = cluster_config(name) if name else None
        return node_type_shapes(yaml.safe_load(path.read_text())) if path else {}
    except Exception:  # noqa: BLE001 - no zones then: the autoscaler picks
        return {}


def instance_resource(cfg: JobConfig) -> str:
    """The resource every worker node type advertises for its instance type (infra/)."""
    return f"instance:{cfg.hardware.instance_type}"


def markets(cfg: JobConfig) -> list[str]:
    """The markets a launch may buy its workers in, in order (spot, then the fallback)."""
    hw = cfg.hardware
    out = [hw.market]
    if hw.market == "spot" and hw.spot_fallback == "on_demand":
        out.append("on_demand")
    return out


def node_type_for(node_types: dict[str, Any], cfg: JobConfig, market: str) -> tuple[str, dict]:
    """Pure: the cluster's node type the autoscaler will launch for the job's workers in
    `market`: the one labelled with the instance type the projection priced, in that market,
    whose node holds the job's GPUs per node (a 1-GPU job on an 8-GPU type pays for 7 idle
    GPUs).

    Raises:
        ConfigError: no node type matches, naming what the job asks for and what exists.
    """
    from orchestrator.config.schema import ConfigError

    hw = cfg.hardware
    nodes = max(1, hw.num_nodes)
    gpus_per_node = hw.num_workers * hw.gpus_per_worker // nodes
    offered = []
    for name, t in node_types.items():
        res, labels = t.get("resources", {}), t.get("labels", {})
        if market not in res:
            continue
        offered.append(f"{name} ({labels.get('instance_type')}, {res.get('GPU', 0)} GPUs)")
        if labels.get("instance_type") == hw.instance_type and res.get("GPU", 0) == gpus_per_node:
            return name, t
    raise ConfigError(
        f"{cfg.job} ({cfg.scale}): no {market} node type of the cluster offers "
        f"{hw.instance_type} with {gpus_per_node} GPUs per node (hardware block); the cluster "
        f"has: {', '.join(offered) or 'none'}. Add one to the cluster file (infra/) or pick a "
        "hardware block whose instance it offers"
    )


def _have(market: str, need: float, zone: str | None = None) -> float:
    """The cluster's `market` units (on the nodes of `zone`), at most `need`."""
    import ray

    if zone is None:
        return min(need, ray.cluster_resources().get(market, 0.0))
    key = zone_resource(zone)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and key in n["Resources"]]
    return min(need, sum(r.get(market, 0.0) for r in nodes))


EXPIRE_ENV = "ORCHESTRATOR_REQUEST_EXPIRE_S"
TRAIN_EXPIRE_S = 180.0
"""Ray Train's own request for the workers expires 180 s after its last renewal (a constant
of ray.train 2.60, AUTOSCALING_REQUESTS_EXPIRE_TIME_S): a driver killed mid-run leaves it
standing that long."""
COORDINATOR_TICK_S = 20.0
"""The AutoscalingCoordinator drops expired requests at its ticks, every 20 s."""
RENEW_S = 20.0


def expire_s(env: dict[str, str] | None = None) -> float:
    """How long the launcher's request outlives its last renewal (a launcher that dies cannot
    hold nodes longer): $ORCHESTRATOR_REQUEST_EXPIRE_S, default 180 s (as Ray Train's), at
    least two renewals."""
    from orchestrator.config.schema import ConfigError

    raw = (os.environ if env is None else env).get(EXPIRE_ENV, "180")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 2 * RENEW_S:  # also refuses nan
        raise ConfigError(
            f"{EXPIRE_ENV}={raw[:40]!r}: expected seconds, at least {2 * RENEW_S:.0f} (the "
            f"launcher renews its request every {RENEW_S:.0f} s)"
        )
    return value


def scale_to_zero_bound_s(
    request_expire_s: float, idle_timeout_s: float, autoscaler_period_s: float
) -> float:
    """Pure: the longest a cluster keeps a job's worker nodes after its driver is gone, even
    killed (nothing released): the last request standing expires (the launcher's or Ray
    Train's), the coordinator drops it at its next tick, the nodes are idle for the idle
    timeout, and the autoscaler's next update terminates them."""
    return (max(request_expire_s, TRAIN_EXPIRE_S) + COORDINATOR_TICK_S + idle_timeout_s
            + autoscaler_period_s)  # fmt: skip


AUTOSCALER_PERIOD_S = 5.0
"""Ray's autoscaler updates every AUTOSCALER_UPDATE_INTERVAL_S, 5 s by default."""


def idle_timeout_s(cfg: JobConfig, env: dict[str, str] | None = None) -> float:
    """How long the cluster keeps an idle worker node: its definition's (a launcher file's
    idle_timeout_minutes, a KubeRay RayCluster's idleTimeoutSeconds), passed by the submission
    as $ORCHESTRATOR_IDLE_TIMEOUT_S (infra/ is not uploaded) or read from $ORCHESTRATOR_CLUSTER's
    file; else `hardware.scale_down_s`, what the job's hardware says of its cluster."""
    import yaml

    from orchestrator.config.schema import ConfigError
    from orchestrator.launch.cluster_state import IDLE_TIMEOUT_ENV, cluster_config, idle_timeout_of

    env = os.environ if env is None else env
    raw = env.get(IDLE_TIMEOUT_ENV)
    if raw is None:
        try:
            name = env.get("ORCHESTRATOR_CLUSTER")
            path = cluster_config(name) if name else None
            found = idle_timeout_of(yaml.safe_load(path.read_text())) if path else None
        except Exception:  # noqa: BLE001 - not a file of ours: the hardware's figure then
            found = None
        return cfg.hardware.scale_down_s if found is None else found
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0.0:  # also refuses nan
        raise ConfigError(f"{IDLE_TIMEOUT_ENV}={raw[:40]!r}: expected seconds, at least 0")
    return value


def scale_down_at(last_use: float, idle_timeout: float) -> float:
    """Pure: when the autoscaler is expected to remove a worker node whose last task ended at
    `last_use` (its requests withdrawn by then): after the idle timeout, at the next of its
    updates, on average half a period later."""
    return last_use + idle_timeout + AUTOSCALER_PERIOD_S / 2


class _Request:
    """The launcher's standing request for worker bundles, registered under its own requester
    id with the cluster's AutoscalingCoordinator (created on the head if no job made it yet).
    Falls back to `ray.autoscaler.sdk.request_resources` if that Ray-internal actor is not
    available in this Ray version."""

    def __init__(self) -> None:
        self.requester_id = f"orchestrator-launch-{uuid.uuid4().hex[:12]}"
        self._actor: Any = None
        self._priority: Any = None
        self.sent_at = 0.0
        try:
            from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
                ResourceRequestPriority,
                get_or_create_autoscaling_coordinator,
            )

            self._actor = get_or_create_autoscaling_coordinator()
            self._priority = ResourceRequestPriority.HIGH
        except Exception as e:  # noqa: BLE001 - an older/newer Ray: the plain SDK call
            print(f"warning: no AutoscalingCoordinator ({e!r}); using request_resources",
                  flush=True)  # fmt: skip

    def send(self, want: list[dict[str, float]]) -> None:
        import ray

        self.sent_at = time.time()
        if self._actor is not None:
            ray.get(
                self._actor.request_resources.remote(
                    requester_id=self.requester_id,
                    resources=want,
                    expire_after_s=expire_s(),
                    priority=self._priority,
                ),
                timeout=60,
            )
        else:
            _plain_request(want)

    def cancel(self) -> None:
        import ray

        if self._actor is not None:
            ray.get(self._actor.cancel_request.remote(self.requester_id), timeout=60)
        else:
            _plain_request([])


def _plain_request(want: list[dict[str, float]]) -> None:
    """Without the coordinator: the cluster-wide request, replaced by every call."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=want)


_request: _Request | None = None


def _wait(
    cfg: JobConfig, market: str, timeout_s: float, poll_s: float, need: Need | None = None,
    workers: int | None = None, zone: str | None = None,
) -> bool | capacity.Decision:  # fmt: skip
    """True once the cluster holds the workers (an elastic job: its minimum; all of them are
    requested); False after `timeout_s`; with `need`, the policy's decision as soon as it
    prefers on-demand to waiting longer."""
    global _request
    if _request is None:
        _request = _Request()
    want = bundles(cfg, market, zone)
    units = sum(b[market] for b in want)
    enough = units * (workers or cfg.hardware.min_workers) / len(want)
    _request.send(want)
    t0, last = time.time(), -1.0
    while True:
        have = _have(market, units, zone)
        if have >= enough:
            return True
        waited = time.time() - t0
        if waited >= timeout_s:
            return False
        if need is not None:
            decision = capacity.decide(need.situation(waited))
            if decision.move in (capacity.Move.ON_DEMAND, capacity.Move.SWITCH):
                return decision
        if time.time() - _request.sent_at >= RENEW_S:
            _request.send(want)  # keep it from expiring while the cloud is slow
        if have != last or int(waited) % 30 == 0:
            print(f"waiting for {_count(cfg)} {market} workers: {have:g}/{enough:g} "
                  f"{market} units after {waited:.0f} s (limit {timeout_s:.0f} s)", flush=True)  # fmt: skip
            last = have
        time.sleep(poll_s)


def _count(cfg: JobConfig) -> str:
    hw = cfg.hardware
    return f"{hw.min_workers}-{hw.num_workers}" if hw.elastic else str(hw.num_workers)


def acquire(
    cfg: JobConfig, poll_s: float = 1.0, need: Need | None = None, workers: int | None = None,
    prefer_zone: str | None = None,
) -> Grant | None:  # fmt: skip
    """Request the job's workers and wait for `workers` of them (default: all of them, an
    elastic job's minimum; None when autoscaling is off): on its own node type, then on each
    of `hardware.alternatives` that fits, each in each of its zones (`_targets`; each waited
    for `hardware.spot_wait_s`), then on demand (`hardware.spot_fallback`). With `need`, a spot
    wait gives way as soon as the capacity policy prices another move better: another node
    type (switch), or on-demand nodes (a deadline the wait would miss).

    Raises:
        RuntimeError: no capacity within the limits (and no fallback, or the fallback failed).
    """
    if not enabled(cfg):
        return None
    hw = cfg.hardware
    t0 = time.time()
    market = hw.market
    units = max(1, hw.gpus_per_worker)
    tried: list[str] = []
    types = cluster_node_types()
    targets = _targets(cfg, types, market, prefer_zone)
    got: bool | capacity.Decision = False
    i = 0
    while i < len(targets):
        name, c, zone = targets[i]
        # The policy weighs switching type only while the job's own type is waited for.
        mine = need if name is None or need is None else dataclasses.replace(need, switches=())
        t_wait = time.time()
        got = _wait(c, market, hw.spot_wait_s, poll_s, mine, workers, zone)
        where = c.hardware.instance_type + (f" in {zone}" if zone else "")
        if got is True:
            note = None
            if tried:
                note = (f"no {market} capacity for {'; '.join(tried)}: "
                        + (f"failed over to {name} ({where})" if name else f"running in {zone}"))  # fmt: skip
                print(note, flush=True)
            return Grant(market, market, units, time.time() - t0, note, name, zone)
        waited = time.time() - t_wait
        if isinstance(got, capacity.Decision) and got.move == capacity.Move.SWITCH:
            to = next(j for j, (n, _, _) in enumerate(targets)
                      if n and switch_label(n) == got.option.label)  # fmt: skip
            tried.append(f"{where} in {waited:.0f} s, when the capacity policy "
                         f"chose {got.message}")  # fmt: skip
            print(f"switching to {targets[to][0]}: the capacity policy chose {got.message}",
                  flush=True)  # fmt: skip
            i = to
            continue
        if got is not False:  # the policy chose on-demand now: no other type is waited for
            break
        tried.append(f"{where} in {hw.spot_wait_s:.0f} s")
        i += 1
    return _fall_back(cfg, types, got, tried, t0, poll_s, workers)


def _targets(
    cfg: JobConfig, types: dict[str, Any], market: str, prefer_zone: str | None
) -> list[tuple[str | None, JobConfig, str | None]]:
    """(alternative block or None for the job's own, its config, zone) in the order waited
    for: each node type that fits, in each of its zones (`prefer_zone`, where a previous try
    ran, first)."""
    from orchestrator.launch.failover import alternatives

    candidates = [(None, cfg), *((a.name, a.cfg) for a in alternatives(cfg) if a.cfg is not None)]
    return [
        (name, c, zone)
        for name, c in candidates
        for zone in sorted(zones_for(types, c, market), key=lambda z: z != prefer_zone)
    ]


def _fall_back(
    cfg: JobConfig, types: dict[str, Any], got: bool | capacity.Decision, tried: list[str],
    t0: float, poll_s: float, workers: int | None,
) -> Grant:  # fmt: skip
    """No spot capacity (`tried`), or the policy chose on-demand (`got`): the job's workers on
    demand, zone by zone, when `hardware.spot_fallback` allows it.

    Raises:
        RuntimeError: no fallback, or no on-demand capacity either.
    """
    hw = cfg.hardware
    if not (hw.market == "spot" and hw.spot_fallback == "on_demand"):
        release()
        raise RuntimeError(
            f"no capacity for {_count(cfg)} {hw.market} workers ({'; '.join(tried)}; "
            f"hardware.spot_fallback={hw.spot_fallback}); check the cluster's node types offer "
            f"a {hw.market!r} resource"
        )
    note = (
        f"spot capacity for {_count(cfg)} workers not obtained ({'; '.join(tried)}): "
        "fell back to on-demand"
    )
    if isinstance(got, capacity.Decision):
        note = (f"fell back to on-demand after waiting {time.time() - t0:.0f} s for spot "
                f"capacity for {_count(cfg)} workers: the capacity policy chose "
                f"{got.message}")  # fmt: skip
    print(note, flush=True)
    units = max(1, hw.gpus_per_worker)
    for zone in zones_for(types, cfg, "on_demand"):
        if _wait(cfg, "on_demand", hw.on_demand_wait_s, poll_s, workers=workers, zone=zone):
            return Grant("on_demand", "on_demand", units, time.time() - t0, note, None, zone)
    release()
    raise RuntimeError(
        f"{note}, and no on-demand capacity either after {hw.on_demand_wait_s:.0f} s "
        "(check the cluster's node types, max_workers and quotas)"
    )


def hold(cfg: JobConfig, market: str, zone: str | None = None) -> None:
    """Ask for the job's workers again right away (after a try ended, Ray Train's request is
    gone): without a request, the nodes left idle would be scaled down while the launcher
    decides what to do next."""
    global _request
    if _request is None:
        _request = _Request()
    _request.send(bundles(cfg, market, zone))


def alive_nodes() -> set[str]:
    """Ids of the cluster's live nodes, as the GCS sees them."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def settle(before: set[str], timeout_s: float = 60.0, poll_s: float = 1.0) -> float:
    """After a node was lost: wait until the GCS has marked one of the nodes alive `before` dead
    (its health checks take seconds to fail), at most `timeout_s`; returns the seconds waited.
    An elastic try sized before that would count the dead node and wait for it in vain."""
    t0 = time.time()
    while time.time() - t0 < timeout_s and before <= alive_nodes():
        time.sleep(poll_s)
    return time.time() - t0


def refresh_reservations() -> None:
    """Make the AutoscalingCoordinator look at the cluster now (it does every 20 s): Ray Train's
    elastic worker group is sized by what the coordinator reserves it, from its view of the
    nodes, so a node that just joined or died must be in that view first."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        actor = get_or_create_autoscaling_coordinator()
        ray.get(actor.get_reserved_resources.remote("orchestrator-refresh", recompute=True),
                timeout=60)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - sized from a stale view: one more try at worst
        print(f"warning: could not refresh the autoscaling coordinator: {e!r}", flush=True)


def workers_there(cfg: JobConfig, market: str) -> int:
    """Workers of the job the cluster's `market` nodes hold in all (busy or not)."""
    import ray

    units = max(1, cfg.hardware.gpus_per_worker)
    return int(ray.cluster_resources().get(market, 0.0) // units)


def release() -> None:
    """Withdraw the launcher's request (idempotent): right before training starts, Ray Train
    holds the workers' request itself; at the end, the autoscaler may remove idle nodes."""
    global _request
    if _request is None:
        return
    try:
        _request.cancel()
    except Exception as e:  # noqa: BLE001 - the cluster may be gone already
        print(f"warning: could not release the resource request: {e}", flush=True)
    _request = None
