"""The `abray` command line: train, sweep, results, demo (the README's main job) and serve (the REST API)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from .training.config import ConfigError, TrainConfig, load_config_file, parse_config

DEMO_DELAYS = (0, 8, 32)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; values stay strings so that pydantic validates them all alike."""
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif "list" in str(field.annotation):
            parser.add_argument(flag, dest=name, default=None, metavar="A,B,...", type=lambda s: s.split(","),
                                help="comma-separated")
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                                help=f"default: {field.default}")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    overrides = {name: getattr(args, name) for name in TrainConfig.model_fields if getattr(args, name) is not None}
    return parse_config({**values, **overrides})


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .results.schema import epochs_frame, write_frame
    from .training.build import load_data
    from .training.parameter_server import TrainingFailed
    from .training.run import run

    config = _config_from_args(args)
    if config.output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        config = config.model_copy(update={"output": f"runs/{config.dataset}-{config.optimizer}-D{config.delay}-"
                                                     f"seed{config.seed}-{stamp}.csv"})
    data = load_data(config)
    total = len(data.train) // config.batch_size * config.epochs
    with tqdm(total=total, unit="step", desc=f"{config.optimizer} D={config.delay}", file=sys.stderr) as bar:
        def on_step(step, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        def on_epoch(m):
            bar.write(f"epoch {m.epoch:3d}  train loss {m.train_loss:.4f}  test loss {m.test_loss:.4f}  "
                      f"test acc {m.test_accuracy:.4f}" + (f"  DIVERGED at step {m.diverged_step}" if m.diverged else ""))

        try:
            history = run(config, data=data, on_step=on_step, on_epoch=on_epoch)
        except TrainingFailed as err:  # a step out of retries, a server that cannot restart: its reason, no traceback
            bar.close()
            print(f"abray train: the run failed: {err}", file=sys.stderr)
            return 1
    output = write_frame(epochs_frame(config.model_dump(), history), config.output)
    last = history[-1]
    status = f"diverged at step {last.diverged_step}" if last.diverged else f"test accuracy {last.test_accuracy:.4f}"
    print(f"{config.optimizer} at delay {config.delay}: {status} after {last.steps} steps")
    print(f"per-epoch metrics: {output.resolve()}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .results.report import report
    from .sweeps.spec import load_spec_file
    from .sweeps.tune import run_sweep

    spec = load_spec_file(args.spec)
    print(f"sweep {spec.options.name!r}: {spec.size} trials", flush=True)
    path = run_sweep(spec, resume=args.resume, write=lambda line: print(line, flush=True))
    if isinstance(path, str):
        print(f"results are in {path}; download the folder and run `abray results` on it")
        return 0
    report(path, export=args.export)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .results.report import report

    report(args.dir, export=args.export, stable_region=not args.no_stable_region)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the default sweep (digits; SGDM and AB; D in {0, 4, 16, 32}; 2 seeds) through Tune."""
    from .results.report import report
    from .sweeps.spec import DEFAULT_SPEC, parse_spec
    from .sweeps.tune import run_sweep

    values = dict(DEFAULT_SPEC, storage=args.storage)
    if args.epochs is not None:
        values["epochs"] = args.epochs
    spec = parse_spec(values)
    print(f"default sweep: digits_cnn, SGDM and AB, delays {DEFAULT_SPEC['grid']['delay']}, seeds "
          f"{DEFAULT_SPEC['grid']['seed']}: {spec.size} trials on Ray Tune", flush=True)
    path = run_sweep(spec, resume=False, write=lambda line: print(line, flush=True))
    report(path)
    return 0


# `abray serve` flags taken straight from the service's settings (abray/service/settings.py): name, type, help
SERVE_SETTINGS = ("max_running_jobs", "max_body_bytes", "max_trials", "max_epochs", "max_delay", "max_workers",
                  "max_name_length", "allowed_hosts", "data_roots", "allow_download", "reads_need_token")


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting in SERVE_SETTINGS, with the setting's description, default and environment variable.
    Unset flags leave the environment's value (or the default) in place."""
    from .service.settings import ENV, Settings

    for name in SERVE_SETTINGS:
        field = Settings.model_fields[name]
        default = field.get_default(call_default_factory=True)
        shown = Settings.DEFAULT_HOSTS if name == "allowed_hosts" else "none" if default in (None, []) else default
        text = f"{field.description or name.replace('_', ' ')} (default {shown}; env {ENV[name]})"
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const="1", default=None, help=text)
        elif "list" in str(field.annotation):
            parser.add_argument(flag, dest=name, default=None, metavar="A,B,...", help=text + "; comma-separated")
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text)


def cmd_serve(args: argparse.Namespace) -> int:
    """The job service: FastAPI on uvicorn. Flags become ABRAY_* settings (see abray/service/settings.py)."""
    import os

    import uvicorn

    flags = {"storage": args.storage, "database_url": args.database, "host": args.host,
             **{name: getattr(args, name) for name in SERVE_SETTINGS}}
    for name, value in flags.items():
        if value is not None:
            os.environ[f"ABRAY_{name.upper()}"] = str(value)
    from .service.settings import from_env

    from_env()  # refuse bad settings before uvicorn starts
    uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="abray", description="Asynchronous training with stale gradients.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="one training run with a fixed gradient delay (the simulator)")
    train.add_argument("--config", help="YAML or JSON file with any of the fields below; flags override it")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="a Ray Tune sweep from a YAML/JSON spec")
    sweep.add_argument("spec")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    sweep.add_argument("--export", help="also write the tidy results to this .csv or .parquet")
    sweep.set_defaults(func=cmd_sweep)

    results = sub.add_parser("results", help="summary, plots and export of a sweep's directory")
    results.add_argument("dir")
    results.add_argument("--export", help=".csv or .parquet")
    results.add_argument("--no-stable-region", action="store_true", help="skip the quadratic-model plot")
    results.set_defaults(func=cmd_results)

    demo = sub.add_parser("demo", help="the default sweep: SGDM against AB on digits at delays 0-32")
    demo.add_argument("--epochs", type=int, default=None, help="default: abray train's")
    demo.add_argument("--storage", default="runs/sweeps")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="the job service: a REST API (FastAPI) over sweeps on Ray")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                                                           "machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--storage", help="jobs' folders and the default SQLite file (default runs/service)")
    serve.add_argument("--database", help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite "
                                          "in storage)")
    _add_serve_flags(serve)
    serve.add_argument("--log-level", default="info", help="default info")
    serve.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"abray {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
