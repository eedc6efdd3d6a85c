"""Command line: `python -m orchestrator {launch,preflight,estimate,plan,bills,validate} ...` (the
Makefile wraps these)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from orchestrator.config.schema import ConfigError
from orchestrator.data.formats import DataError


def _overrides(texts: list[str] | str | None) -> list[str]:
    """`--set "a=1 b=2"`, repeatable: every flag's overrides, in order."""
    if isinstance(texts, str):
        texts = [texts]
    return [item for text in texts or [] for item in text.split()]


def cmd_eval(args: argparse.Namespace) -> int:
    from orchestrator.evaluation.command import cmd_eval as run_eval

    return run_eval(args.job, args.scale, args.run, args.model, _overrides(args.set),
                    args.run_as, args.yes)  # fmt: skip


def cmd_launch(args: argparse.Namespace) -> int:
    if args.cluster:  # a named cluster (infra/): submit through the Ray Jobs API
        from orchestrator.compose.load import job_configs
        from orchestrator.launch import named_clusters
        from orchestrator.launch.remote import remote_consent

        over = _overrides(args.set)
        yes = remote_consent(args.job, args.scale, over, args.stage, args.yes)  # asked here
        configs = job_configs(args.job, args.scale, over)  # every stage: a typo fails here
        cfg = configs[args.stage] if args.stage else next(iter(configs.values()))
        named_clusters.check_submission(args.cluster, cfg, args.run)  # storage the nodes can reach
        if (
            "" in configs
        ):  # a single job; a pipeline's stage caps are decided on the head, stage by stage
            from orchestrator.launch.remote import remote_startup_check

            remote_startup_check(cfg, args.run)
        _, status = named_clusters.submit(
            args.cluster, args.job, args.scale, over, args.run,
            follow=not args.detach, stage=args.stage, yes=yes, fresh=args.fresh,
        )  # fmt: skip
        return 0 if status in ("SUCCEEDED", "SUBMITTED") else 1
    from orchestrator.compose.load import job_stages
    from orchestrator.launch.run import launch
    from orchestrator.storage.layout import StopReason

    if job_stages(args.job, args.scale):  # a multi-stage job: its stages in order
        from datetime import datetime

        from orchestrator.launch.pipeline import run_pipeline

        run = args.run or f"{args.job}-{datetime.now():%Y%m%d-%H%M%S}"
        out = run_pipeline(args.job, args.scale, _overrides(args.set), run, args.stage, args.yes,
                           args.fresh)  # fmt: skip
        return 0 if StopReason(out.stop_reason).ok else 1
    if args.stage or args.fresh:
        what = f"stage={args.stage}" if args.stage else f"fresh={args.fresh}"
        print(f"error: job {args.job!r} has no stages ({what})", file=sys.stderr)
        return 2
    res = launch(args.job, args.scale, _overrides(args.set), args.run, yes=args.yes)
    return 0 if StopReason(res.stop_reason).ok else 1


def cmd_estimate(args: argparse.Namespace) -> int:
    """Our run's projected bill (the headline), or with --replay the original run's."""
    from orchestrator.compose.load import compose, job_stages
    from orchestrator.cost.estimator import project
    from orchestrator.cost.lengths import Lengths

    if job_stages(args.job, args.scale or "full"):  # a pipeline: each stage and the total
        from orchestrator.launch.pipeline import project_pipeline

        pp = project_pipeline(args.job, args.scale or "full", _overrides(args.set))
        if args.json:
            print(json.dumps(pp, indent=1))
        else:
            for name, p in pp["stages"].items():
                print(
                    f"  stage {name}: ${p['usd']:.4f} (${p['usd_low']:.4f}-${p['usd_high']:.4f}), {p['hours']:.3f} h"
                )
            print(
                f"{args.job}: ${pp['usd']:.4f} (${pp['usd_low']:.4f}-${pp['usd_high']:.4f}), "
                f"{pp['hours']:.3f} h in total"
            )
        return 0

    cfg = compose(args.job, args.scale or "full", _overrides(args.set))
    lengths = vocab = None
    if cfg.scale == "local" and cfg.data.format != "text":  # the sample ships: measure it
        import tempfile
        from pathlib import Path

        from orchestrator.data.dataset import prepare_data

        with tempfile.TemporaryDirectory() as d:
            data = prepare_data(cfg.data, Path(d))
            values = tuple(int(n) for n in data.train.lengths())
        lengths = Lengths(values, len(values), "measured", "the local sample, tokenized here")
        vocab = data.vocab_size
    elif cfg.scale != "local":
        from orchestrator.cost.prices import apply_live_prices

        apply_live_prices(cfg)
    from orchestrator.cost.memory import check_job

    est = check_job(cfg)
    p = project(cfg, vocab_size=vocab, replay=args.replay, lengths=lengths)
    if args.json:
        out = p.as_dict()
        if est is not None:
            out["gpu_memory"] = est.as_dict()
        print(json.dumps(out, indent=1))
    else:
        print(f"{cfg.job} ({cfg.scale}): {p.summary()}")
        if not args.replay:
            print(
                f"  the original run (--replay): {project(cfg, vocab_size=vocab, replay=True, lengths=lengths).summary()}"
            )
        if est is not None:
            print(f"  GPU memory: {est.summary()}")
        from orchestrator.launch.failover import alternatives, summary

        for alt in alternatives(cfg):  # where it fails over to without capacity
            if alt.cfg is None:
                print(f"  alternative {alt.name}: not used, {alt.why}")
                continue
            q = project(alt.cfg, vocab_size=vocab, lengths=lengths)
            print(summary(alt.name, alt.cfg, q.usd, q.hours))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The Chinchilla planner on the job's hardware, or on `--gpu`'s cheapest 8-GPU node."""
    from orchestrator.compose.load import compose
    from orchestrator.plan.planner import make_plan, report

    budgets = {
        "budget_usd": args.usd,
        "budget_flops": args.flops,
        "budget_gpu_hours": args.gpu_hours,
    }
    given = {k: v for k, v in budgets.items() if v is not None}
    if len(given) != 1:
        raise ConfigError("give exactly one budget: --usd, --flops or --gpu-hours")
    scale = args.scale or ("local" if args.gpu == "cpu" else "full")
    overrides = [f"plan.{k}={v}" for k, v in given.items()]
    overrides += ["plan.enabled=true", f"plan.rule={args.rule}", "train.max_steps=null"]
    if args.variant:
        overrides.append(f"variant={args.variant}")
    cfg = compose(args.job, scale, overrides + _hardware_overrides(args))
    plan, job = make_plan(cfg)
    if args.json:
        out = plan.as_dict()
        out["job"] = {
            "model": job.model.__dict__,
            "train": job.train.__dict__,
            "optim": job.optim.__dict__,
        }
        print(json.dumps(out, indent=1, default=str))
    else:
        print(report(plan, job))
    return 0


def _hardware_overrides(args: argparse.Namespace) -> list[str]:
    """--gpu X (--market, --nodes): the catalog's cheapest node of that GPU, all its GPUs used."""
    if args.gpu in (None, "cpu"):
        return [f"hardware.market={args.market}"] if args.market else []
    from orchestrator.compose.load import job_configs
    from orchestrator.cost.estimator import price_per_hour

    cost = next(iter(job_configs(args.job, "full").values())).cost
    market = args.market or "spot"
    nodes = [
        (price_per_hour(p, market) / p.num_gpus, name, p)
        for name, p in cost.instances.items()
        if p.gpu == args.gpu and p.num_gpus
    ]
    if not nodes:
        known = sorted({p.gpu for p in cost.instances.values() if p.gpu})
        raise ConfigError(
            f"--gpu {args.gpu!r}: no instance in the price catalog has it; known: {known}"
        )
    nodes.sort(key=lambda t: (-t[2].num_gpus, t[0]))
    _, name, price = nodes[0]
    return [
        f"hardware.accelerator={args.gpu}",
        f"hardware.instance_type={name}",
        f"hardware.market={market}",
        "hardware.gpus_per_worker=1",
        f"hardware.num_nodes={args.nodes}",
        f"hardware.num_workers={args.nodes * price.num_gpus}",
        "train.micro_batch_size=1",
    ]


def cmd_cluster(args: argparse.Namespace) -> int:
    from orchestrator.launch import named_clusters

    if args.action == "up":
        named_clusters.up(args.name)
    elif args.action == "down":
        named_clusters.down(args.name)
    elif args.action == "status":
        print(named_clusters.status(args.name))
    elif args.action == "logs":
        if args.follow:
            print(f"status: {named_clusters.follow_logs(args.name, args.id)}")
        else:
            print(named_clusters.logs(args.name, args.id))
    elif args.action == "stop":
        print(
            f"stop {args.id}: {'requested' if named_clusters.stop(args.name, args.id) else 'already ended'}"
        )
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    from orchestrator.launch.backends import preflight_main as preflight

    return preflight(args.cluster, args.job, args.scale, _overrides(args.set))


def cmd_bills(args: argparse.Namespace) -> int:
    from pathlib import Path

    from orchestrator.cost.bills_report import write_bills
    from orchestrator.tracking.runs import tracking_uri

    paths = write_bills(Path(args.out), tracking_uri(), log_to_mlflow=not args.no_mlflow)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.compose.load import JOBS_DIR, job_configs
    from orchestrator.cost.memory import check_job

    jobs = args.jobs or sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))
    for job in jobs:
        for scale in ("local", "full"):
            for stage, cfg in job_configs(job, scale).items():  # every stage of a pipeline
                est = check_job(cfg)  # GPU jobs: memory and node disk fit
                name = f"{job}:{stage}" if stage else job
                print(f"ok  {name} ({scale})" + (f": {est.summary()}" if est else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["make"]:  # the Makefile: user values come from ORCH_* variables
        import os

        from orchestrator.make_args import make_argv

        try:
            argv = make_argv(argv[1] if len(argv) > 1 else "", os.environ)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from orchestrator.launch.failures import RunFailed
    from orchestrator.tracking.redact import scrub

    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"error: {scrub(str(e))}", file=sys.stderr)
        return 2
    except RunFailed as e:  # training stopped for good: say what, where, and how to go on
        print(scrub(e.summary()), file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per Makefile target."""
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _launch_parser(sub)

    p = sub.add_parser("cluster", help="named clusters from infra/: up, down, status, logs, stop")
    p.add_argument("action", choices=["up", "down", "status", "logs", "stop"])
    p.add_argument("name", help="infra/<name>.yaml, e.g. aws-spot or local-fake")
    p.add_argument("--id", default=None, help="submission id (logs, stop)")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(fn=cmd_cluster)

    p = sub.add_parser(
        "preflight", help="check credentials, quotas, storage, tracking and image before a run"
    )
    p.add_argument("job")
    p.add_argument("--cluster", required=True, help="a cluster from infra/ (e.g. aws-spot)")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument("--set", action="append", default=None)
    p.set_defaults(fn=cmd_preflight)

    p = sub.add_parser("estimate", help="projected bill of a job (no cluster needed)")
    p.add_argument("job")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument("--set", action="append", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--replay", action="store_true",
        help="project the original run as it was (its batching and kernels), not ours",
    )  # fmt: skip
    p.set_defaults(fn=cmd_estimate)
    _plan_parser(sub)

    p = sub.add_parser(
        "bills", help="projected full-scale bills of every job + actual bills in MLflow"
    )
    p.add_argument("--out", default=".")
    p.add_argument("--no-mlflow", action="store_true")
    p.set_defaults(fn=cmd_bills)

    p = sub.add_parser("validate", help="compose and validate job files at both scales")
    p.add_argument("jobs", nargs="*")
    p.set_defaults(fn=cmd_validate)
    return parser


def _launch_parser(sub) -> None:
    p = sub.add_parser("launch", help="run (or continue) a job")
    p.add_argument("job", help="job name (jobs/<job>.yaml) or path to a job file")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument("--run", default=None, help="run name; an existing run is continued")
    p.add_argument(
        "--set", action="append", default=None,
        help='overrides, e.g. "optim.lr=1e-5 train.max_steps=20" (repeatable)',
    )  # fmt: skip
    p.add_argument(
        "--yes", action="store_true", help="launch even if the projection exceeds budget.max_usd"
    )
    p.add_argument(
        "--cluster", default=None, help="a cluster from infra/ (e.g. aws-spot, local-fake)"
    )
    p.add_argument("--detach", action="store_true", help="with --cluster: submit and return")
    p.add_argument("--stage", default=None, help="a pipeline job: run this stage only")
    p.add_argument(
        "--fresh", default=None,
        help="a pipeline job: start this stage and the ones after it over (new run folders)",
    )  # fmt: skip
    p.set_defaults(fn=cmd_launch)

    p = sub.add_parser("eval", help="evaluate an existing export (docs/evaluation.md)")
    p.add_argument("job", help="job name (its template, data and eval settings)")
    p.add_argument("--run", default=None, help="the run of the job whose export to evaluate")
    p.add_argument("--model", default=None, help="or a model: a HF folder, s3:// URL or id")
    p.add_argument("--run-as", default=None, help="the evaluation's run name (default RUN-eval)")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument(
        "--set", action="append", default=None, help='overrides, e.g. "eval.questions=mt_bench"'
    )
    p.add_argument(
        "--yes", action="store_true", help="launch even if the projection exceeds budget.max_usd"
    )
    p.set_defaults(fn=cmd_eval)


def _plan_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="Chinchilla planner: the compute-optimal model a budget buys, and its job"
    )
    p.add_argument("--usd", type=float, help="dollars (overheads included)")
    p.add_argument("--flops", type=float, help="training FLOPs, e.g. 1e21")
    p.add_argument("--gpu-hours", type=float, dest="gpu_hours")
    p.add_argument("--gpu", default=None, help="e.g. A100-80GB, H100-80GB, or cpu (this machine)")
    p.add_argument("--market", choices=["spot", "on_demand"], default=None)
    p.add_argument("--nodes", type=int, default=1, help="nodes of --gpu (8 GPUs each)")
    p.add_argument(
        "--rule", choices=["tokens_per_param", "epoch", "hoffmann"], default="tokens_per_param"
    )
    p.add_argument("--job", default="cerebras_gpt", help="the pretraining job to size")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument("--variant", default=None, help="e.g. 111m_mup for a muP job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)


if __name__ == "__main__":
    sys.exit(main())
