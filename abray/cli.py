"""The `abray` command line: train, advise (the lr advisor), sweep, results, demo (the README's main job), serve
(the REST API), and the service's client: submit, jobs, job, cancel, fetch.

A user's mistake (a bad config or spec, a missing folder, a cluster too small, a refused request) ends with a
message and exit status 2 (1 for what the service or the network refused), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from datetime import datetime
from pathlib import Path

from .client import DEFAULT_URL, ServiceError
from .training.config import ConfigError, TrainConfig, load_config_file, parse_config
from .training.data import DataError

SERVE_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _choices(annotation) -> tuple:
    """The allowed values of a Literal (or Optional[Literal]) field, else ()."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return next((_choices(a) for a in typing.get_args(annotation) if _choices(a)), ())


def _default(field) -> str:
    return "unset" if field.default is None else str(field.default)


# the fields `abray advise` reads (abray.advisor.advise_config and delay_warning): its only flags
ADVISE_FIELDS = ("dataset", "data_root", "download", "model", "optimizer", "lr", "momentum", "rho", "rho_ramp",
                 "clip_factor", "delay", "batch_size", "seed", "device")


def _add_config_flags(parser: argparse.ArgumentParser, only: typing.Optional[tuple[str, ...]] = None) -> None:
    """One flag per TrainConfig field (or per field in `only`), with its allowed values and default in --help;
    values stay strings so that pydantic validates them all alike (and names every bad one at once)."""
    for name, field in TrainConfig.model_fields.items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        about = [field.description] if field.description else []
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help="; ".join(about + [f"default: {_default(field)}"]))
        elif "list" in str(field.annotation):
            parser.add_argument(flag, dest=name, default=None, metavar="A,B,...", type=lambda s: s.split(","),
                                help="; ".join(about + ["comma-separated", f"default: {_default(field)}"]))
        else:
            choices = _choices(field.annotation)
            allowed = [f"one of {', '.join(map(str, choices))}"] if choices else []
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                                help="; ".join(about + allowed + [f"default: {_default(field)}"]))


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    overrides = {name: getattr(args, name) for name in TrainConfig.model_fields
                 if getattr(args, name, None) is not None}
    return parse_config({**values, **overrides})


def run_label(config: TrainConfig) -> str:
    """What a run is, in a few words: the optimizer and how its gradients are delayed."""
    if config.mode == "free":
        return f"{config.optimizer} free W={config.workers}"
    if config.mode == "distributed":
        return f"{config.optimizer} D={config.delay} W={config.workers}"
    return f"{config.optimizer} D={config.delay}"


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .results.schema import epochs_frame, write_frame
    from .training.build import load_data
    from .training.parameter_server import TrainingFailed
    from .training.run import run
    from .training.traps import history_warnings

    config = _config_from_args(args)
    if config.output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        delay = "free" if config.mode == "free" else f"D{config.delay}"
        config = config.model_copy(update={"output": f"runs/{config.dataset}-{config.optimizer}-{delay}-"
                                                     f"seed{config.seed}-{stamp}.csv"})
    data = load_data(config)
    _warn(_setup_warnings(config, data, advise=args.advise))
    total = len(data.train) // config.batch_size * config.epochs
    with tqdm(total=total, unit="step", desc=run_label(config), file=sys.stderr) as bar:
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
    _warn(history_warnings(config, history))
    last = history[-1]
    status = f"diverged at step {last.diverged_step}" if last.diverged else f"test accuracy {last.test_accuracy:.4f}"
    print(f"{run_label(config)}: {status} after {last.steps} steps")
    print(f"per-epoch metrics: {output.resolve()}")
    return 0


def _warn(lines) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _setup_warnings(config: TrainConfig, data, advise: bool) -> list[str]:
    """The config's traps, and at a delay the advisor's verdict when `advise` and the model is small enough."""
    from .training.traps import config_warnings

    found = config_warnings(config)
    if advise and config.delay > 0:
        from .advisor import ADVICE_MAX_WEIGHTS, advise_config, delay_warning
        from .training.models import build_model

        if sum(p.numel() for p in build_model(config.model, data.num_classes).parameters()) <= ADVICE_MAX_WEIGHTS:
            warning = delay_warning(config, advise_config(config, data, batches=4, iterations=30))
            found += [warning] if warning else []
    return found


def cmd_advise(args: argparse.Namespace) -> int:
    """The lr advisor: the largest stable lr for SGDM and AB at the config's delay, from the model's curvature."""
    from .advisor import advise_config, delay_warning

    config = _config_from_args(args)
    if not 1 <= args.batches <= 1000 or not 1 <= args.iterations <= 10_000:
        raise ConfigError("invalid advise options:\n  batches: must be in [1, 1000]\n  iterations: must be in "
                          f"[1, 10000] (got batches={args.batches}, iterations={args.iterations})")
    advice = advise_config(config, batches=args.batches, iterations=args.iterations)
    print(f"{config.model} on {config.dataset}, initialised with seed {config.seed}, {args.batches} batches of "
          f"{config.batch_size}:")
    print("\n".join(advice.lines()))
    advised = advice.lr_for(config.optimizer)
    if advised is not None:
        print(f"configured: {config.optimizer}, lr {config.lr:g} ({config.lr / advised:.2g}x the advised "
              f"{advised:.3g})")
    # The edge is the curvature at initialisation's: sharpness grows as unnormalized networks train, and BatchNorm
    # makes the bound loose (docs/when-ab-works.md measured both), so the number is a bound, not a recommendation.
    print("a bound from the curvature at initialisation, not an lr to train at: without normalization layers "
          "sharpness grows as training goes on, so train well below it; with BatchNorm it is cautious "
          "(docs/when-ab-works.md)")
    _warn([w for w in [delay_warning(config, advice)] if w])
    return 0


def _export_path(value: str | None):
    from .results.schema import export_path

    return export_path(value) if value else None


def cmd_sweep(args: argparse.Namespace) -> int:
    from .results.report import report
    from .sweeps.spec import parse_spec
    from .sweeps.tune import run_sweep

    spec = parse_spec(load_config_file(args.spec))
    export = _export_path(args.export)
    _warn(spec.warnings())
    print(f"sweep {spec.options.name!r}: {spec.size} trials", flush=True)
    path = run_sweep(spec, resume=args.resume, write=lambda line: print(line, flush=True))
    if isinstance(path, str):
        print(f"results are in {path}; download the folder and run `abray results` on it")
        return 0
    report(path, export=export or path / "results.parquet")
    _how_to_load(path, export or path / "results.parquet")
    return 0


def _how_to_load(sweep_dir: Path, results: Path) -> None:
    print(f"read them in Python: pandas.read_parquet({str(results)!r})" if results.suffix == ".parquet"
          else f"read them in Python: pandas.read_csv({str(results)!r})")
    print(f"`abray results {sweep_dir} --export FILE.csv|.parquet` summarises the sweep again and writes its results")


def cmd_results(args: argparse.Namespace) -> int:
    from .results.report import report

    report(args.dir, export=_export_path(args.export), stable_region=not args.no_stable_region)
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
    results = path / "results.parquet"
    report(path, export=results)
    _how_to_load(path, results)
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
        text = f"{field.description or name.replace('_', ' ')} (default: {shown}; env {ENV[name]})"
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const="1", default=None, help=text)
        elif "list" in str(field.annotation):
            parser.add_argument(flag, dest=name, default=None, metavar="A,B,...", help=text + "; comma-separated")
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text)


def _serve_url(args: argparse.Namespace) -> str:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    return f"http://{host}:{args.port}"


def _port_is_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no obstacle
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _check_database(settings) -> None:
    """Open the service's database once before it starts, so that a bad URL, a server that does not answer or a
    database of another schema version is a message, not a traceback from the server's start-up."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from .service import store

    settings.storage.mkdir(parents=True, exist_ok=True)
    try:
        store.connect(settings.database, create=True).dispose()  # the service's first start creates it
    except store.SchemaError as err:
        raise ConfigError(str(err)) from None
    except SQLAlchemyError as err:
        url = make_url(settings.database).render_as_string(hide_password=True)
        raise ConfigError(f"cannot use the database {url}: {str(err).splitlines()[0]}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """The job service: FastAPI on uvicorn. Flags become ABRAY_* settings (see abray/service/settings.py)."""
    flags = {"storage": args.storage, "database_url": args.database, "host": args.host,
             **{name: getattr(args, name) for name in SERVE_SETTINGS}}
    for name, value in flags.items():
        if value is not None:
            os.environ[f"ABRAY_{name.upper()}"] = str(value)
    from .service import background
    from .service.settings import from_env

    settings = from_env()  # refuse bad settings before anything starts
    if args.stop:
        background.stop_service(settings.storage)
        return 0
    _check_database(settings)
    if not _port_is_free(args.host, args.port):
        raise ConfigError(f"port {args.port} on {args.host} is in use (another `abray serve`? `abray serve --stop` "
                          "stops the one of this storage); choose another with --port")
    if args.detach:
        argv = [a for a in args.argv if a != "--detach"]
        return background.start_background(argv, settings.storage, _serve_url(args))
    import uvicorn

    forget = background.record_server(settings.storage, _serve_url(args))
    try:
        uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        forget()
    return 0


# ---- the service's client ---------------------------------------------------------------------------------

def _client(args: argparse.Namespace):
    from .client import Client

    return Client(args.url, args.token)


def _progress_text(p: dict) -> str:
    extra = [f"{p[k]} {k}" for k in ("running", "failed", "diverged", "cancelled") if p.get(k)]
    return f"{p['done']}/{p['total']} done" + (f" ({', '.join(extra)})" if extra else "")


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.submit(args.spec)
        print(f"job {job.id} ({job.name}): {job.status}, {job.progress['total']} trials; {job.dashboard_url}")
        if not args.wait:
            print(f"follow it with `abray job {job.id}`; read its results with `abray fetch {job.id} -o FILE`")
            return 0
        try:
            job.wait(progress=True, poll_s=args.poll)
        except KeyboardInterrupt:
            print(f"\nstopped waiting; job {job.id} goes on (`abray cancel {job.id}` cancels it)", file=sys.stderr)
            return 130
        return _finished(job)


def _finished(job) -> int:
    from .results.report import summary_table

    print(f"job {job.id} ({job.name}): {job.status}, {_progress_text(job.progress)}"
          + (f"; error: {job.error}" if job.error else ""))
    summary = job.summary()
    if len(summary):
        print(summary_table(summary))
    print(f"results: `abray fetch {job.id} -o results.parquet`, or in Python: "
          f"abray.client.Client({job.client.url!r}).job({job.id}).results()")
    return 0 if job.status == "succeeded" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.jobs(status=args.status, limit=args.limit)
    if not jobs:
        print("no jobs" + (f" {args.status}" if args.status else ""))
    for job in jobs:
        print(f"{job.id:>5}  {job.name[:24]:<24}  {job.status:<9}  {_progress_text(job.progress):<28}  "
              f"{job.info['created_at'][:19].replace('T', ' ')}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.id)
        info = job.info
        print(f"job {job.id} ({job.name}): {job.status}, {_progress_text(job.progress)}")
        for key in ("created_at", "started_at", "finished_at", "cancel_requested_at", "error"):
            if info.get(key):
                print(f"  {key.replace('_', ' ')}: {info[key]}")
        print(f"  spec: {info['spec']}")
        print(f"  dashboard: {job.dashboard_url}")
        summary = job.summary()
    if len(summary):
        from .results.report import summary_table

        print(summary_table(summary))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.id).cancel()
    print(f"job {job.id} ({job.name}): {job.status}" + (", stopping its trials" if job.status == "running" else ""))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.job(args.id).download(args.output)
    print(f"job {args.id}'s results: {path}")
    return 0


def _client_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--url", default=None, help=f"the service; default: $ABRAY_URL, else {DEFAULT_URL}")
    flags.add_argument("--token", default=None, help="its API token (for submit and cancel); default: $ABRAY_TOKEN")
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abray", description="Asynchronous training with stale gradients.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="one training run with a gradient delay (simulated, or on Ray)")
    train.add_argument("--config", help="YAML or JSON file with any of the fields below; flags override it")
    _add_config_flags(train)
    train.add_argument("--no-advise", dest="advise", action="store_false",
                       help="skip the lr advisor's check at a delay (it costs Hessian-vector products and, for AB, "
                            "a simulation of its quadratic model)")
    train.set_defaults(func=cmd_train)

    advise = sub.add_parser(
        "advise", help="the largest stable lr for SGDM and AB at a delay (the lr advisor)",
        description="The largest stable learning rate for SGDM and for AB at the config's delay: the top Hessian "
                    "eigenvalue of the model as its seed initialises it, on its first training batches, put into "
                    "the quadratic theory of delayed momentum. A bound, not an lr to train at "
                    "(docs/when-ab-works.md). Takes the fields that change the advice; a --config file may hold "
                    "any `abray train` field.")
    advise.add_argument("--config", help="YAML or JSON file with any `abray train` field; flags override it")
    _add_config_flags(advise, only=ADVISE_FIELDS)
    advise.add_argument("--batches", type=int, default=8,
                        help="training batches the Hessian is taken over, 1 to 1000 (default: 8)")
    advise.add_argument("--iterations", type=int, default=50, help="power iterations at most, 1 to 10000 (default: 50)")
    advise.set_defaults(func=cmd_advise)

    sweep = sub.add_parser("sweep", help="a Ray Tune sweep from a YAML/JSON spec")
    sweep.add_argument("spec", help="a YAML or JSON sweep spec (README: Sweeps with Ray Tune)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    sweep.add_argument("--export", help="where to write the tidy results, .csv or .parquet "
                                        "(default: results.parquet in the sweep's folder)")
    sweep.set_defaults(func=cmd_sweep)

    results = sub.add_parser("results", help="summary, plots and export of a sweep's folder")
    results.add_argument("dir", help="the sweep's folder (STORAGE/NAME, e.g. runs/sweeps/demo)")
    results.add_argument("--export", help="also write the tidy results to this .csv or .parquet file")
    results.add_argument("--no-stable-region", action="store_true", help="skip the quadratic-model plot")
    results.set_defaults(func=cmd_results)

    demo = sub.add_parser("demo", help="the default sweep: SGDM against AB on digits at delays 0-32")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: abray train's, 60)")
    demo.add_argument("--storage", default="runs/sweeps", help="where the sweep's folder goes (default: runs/sweeps)")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="the job service: a REST API (FastAPI) over sweeps on Ray")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                                                            "machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument("--storage", help="jobs' folders, the default SQLite file and the service's records "
                                         "(default: $ABRAY_STORAGE, else runs/service)")
    serve.add_argument("--database", help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite "
                                          "in storage)")
    _add_serve_flags(serve)
    serve.add_argument("--log-level", default="info", choices=SERVE_LOG_LEVELS, help="default: info")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="run in the background (log: STORAGE/serve.log); "
                                                            "return once it is ready")
    mode.add_argument("--stop", action="store_true", help="stop this storage's service and the local Ray head it "
                                                          "started (no other Ray), cancelling the jobs still "
                                                          "running on that head, then exit")
    serve.set_defaults(func=cmd_serve)

    client_flags = _client_flags()
    submit = sub.add_parser("submit", parents=[client_flags], help="submit a sweep spec to the service as a job")
    submit.add_argument("spec", help="a YAML or JSON sweep spec, as for `abray sweep` (without storage)")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end, then print its summary")
    submit.add_argument("--poll", type=float, default=2.0, help="seconds between checks with --wait (default: 2)")
    submit.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", parents=[client_flags], help="the service's jobs, newest first")
    jobs.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"),
                      help="only jobs in this state (default: all)")
    jobs.add_argument("--limit", type=int, default=20, help="default: 20")
    jobs.set_defaults(func=cmd_jobs)

    job = sub.add_parser("job", parents=[client_flags], help="one job: status, progress, times, error, summary")
    job.add_argument("id", type=int)
    job.set_defaults(func=cmd_job)

    cancel = sub.add_parser("cancel", parents=[client_flags], help="cancel a queued or running job")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(func=cmd_cancel)

    fetch = sub.add_parser("fetch", parents=[client_flags], help="download a job's tidy results")
    fetch.add_argument("id", type=int)
    fetch.add_argument("-o", "--output", required=True, help="a .csv, .parquet or .json file")
    fetch.set_defaults(func=cmd_fetch)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the subcommand's own arguments (serve --detach passes them on)
    try:
        return args.func(args)
    except (ConfigError, DataError) as err:
        print(f"abray {args.command}: {err}", file=sys.stderr)
        return 2
    except ServiceError as err:
        print(f"abray {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nabray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
