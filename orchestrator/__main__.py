"""Command line: `python -m orchestrator {launch,estimate,validate} ...` (the Makefile wraps these)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from orchestrator.config.schema import ConfigError
from orchestrator.data.formats import DataError


def _overrides(text: str | None) -> list[str]:
    return text.split() if text else []


def cmd_launch(args: argparse.Namespace) -> int:
    from orchestrator.launch.run import launch

    res = launch(args.job, args.scale, _overrides(args.set), args.run, yes=args.yes)
    return 0 if res.stop_reason in ("completed", "budget") else 1


def cmd_estimate(args: argparse.Namespace) -> int:
    from orchestrator.config.load import compose
    from orchestrator.cost.estimator import project

    cfg = compose(args.job, args.scale or "full", _overrides(args.set))
    measured = vocab = None
    if cfg.scale == "local":  # the sample ships with the project: measure it
        import tempfile
        from pathlib import Path

        from orchestrator.data.dataset import prepare_data

        with tempfile.TemporaryDirectory() as d:
            data = prepare_data(cfg.data, Path(d))
        measured, vocab = (len(data.train), data.train_tokens), data.vocab_size
    else:
        from orchestrator.cost.prices import apply_live_prices

        apply_live_prices(cfg)
    p = project(cfg, measured=measured, vocab_size=vocab)
    print(
        json.dumps(p.as_dict(), indent=1)
        if args.json
        else f"{cfg.job} ({cfg.scale}): {p.summary()}"
    )
    return 0


def cmd_bills(args: argparse.Namespace) -> int:
    from pathlib import Path

    from orchestrator.cost.bills import write_bills
    from orchestrator.tracking.runs import tracking_uri

    paths = write_bills(Path(args.out), tracking_uri(), log_to_mlflow=not args.no_mlflow)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.config.load import JOBS_DIR, compose

    jobs = args.jobs or sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))
    for job in jobs:
        for scale in ("local", "full"):
            compose(job, scale)
            print(f"ok  {job} ({scale})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("launch", help="run (or continue) a job")
    p.add_argument("job", help="job name (jobs/<job>.yaml) or path to a job file")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument("--run", default=None, help="run name; an existing run is continued")
    p.add_argument("--set", default=None, help='overrides, e.g. "optim.lr=1e-5 train.max_steps=20"')
    p.add_argument(
        "--yes", action="store_true", help="launch even if the projection exceeds budget.max_usd"
    )
    p.set_defaults(fn=cmd_launch)

    p = sub.add_parser("estimate", help="projected bill of a job (no cluster needed)")
    p.add_argument("job")
    p.add_argument("--scale", choices=["local", "full"], default=None)
    p.add_argument("--set", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_estimate)

    p = sub.add_parser(
        "bills", help="projected full-scale bills of every job + actual bills in MLflow"
    )
    p.add_argument("--out", default=".")
    p.add_argument("--no-mlflow", action="store_true")
    p.set_defaults(fn=cmd_bills)

    p = sub.add_parser("validate", help="compose and validate job files at both scales")
    p.add_argument("jobs", nargs="*")
    p.set_defaults(fn=cmd_validate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
