"""What the job service accepts: a valid sweep spec (abray.sweeps.spec, the one validation), within this service's
limits (abray.service.settings), reading data only where the operator allows, and fitting the cluster when the
cluster cannot grow. Every problem is reported at once, as a ConfigError (the API's 422)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..sweeps.spec import SweepSpec, parse_spec
from ..training.config import ConfigError, shown
from .settings import Settings

# fields the service sets itself: each job writes only under its own folder
SERVICE_FIELDS = ("storage", "storage_path", "output")
# trial fields whose largest value is a service setting
LIMITED = {"epochs": "max_epochs", "delay": "max_delay", "workers": "max_workers"}


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _request_problems(values: dict, settings: Settings) -> list[dict]:
    """What the service refuses before parsing: fields it sets, a long name, data folders and downloads."""
    found = [{"loc": [f], "msg": "set by the service (each job writes under its own folder); leave it out"}
             for f in SERVICE_FIELDS if f in values]
    name = values.get("name")
    if isinstance(name, str) and len(name) > settings.max_name_length:
        found.append({"loc": ["name"], "msg": f"{len(name)} characters, more than this service accepts "
                                              f"({settings.max_name_length})"})
    root = values.get("data_root")
    if root is not None:
        allowed = [Path(r).resolve() for r in settings.data_roots]
        try:
            inside = isinstance(root, str) and any(Path(root).resolve().is_relative_to(a) for a in allowed)
        except (OSError, ValueError):  # not a path this machine can have
            inside = False
        if not inside:
            where = (f"only folders in {', '.join(map(str, allowed))}" if allowed
                     else "none: its operator names them with `abray serve --data-roots`")
            found.append({"loc": ["data_root"], "msg": f"this service reads data from {where} (got {shown(root)})"})
    if values.get("download") is True and not settings.allow_download:
        found.append({"loc": ["download"], "msg": "this service does not download data sets (its operator allows "
                                                  "it with `abray serve --allow-download`)"})
    return found


def _limit_problems(spec: SweepSpec, settings: Settings) -> list[dict]:
    """Each trial value beyond this service's limits, named by its field (and grid value)."""
    found = []
    for field, setting in LIMITED.items():
        limit = getattr(settings, setting)
        values = spec.options.grid.get(field)
        if values is not None:  # a grid list: each value beyond the limit, by its place
            found += [{"loc": ["grid", field, i], "msg": f"{field}={v}: more than this service accepts ({limit}; "
                                                         f"`abray serve {_flag(setting)}`)"}
                      for i, v in enumerate(values) if v > limit]
        else:
            value = spec.trials[0][field]
            if value > limit:
                found.append({"loc": [field], "msg": f"{value}, more than this service accepts ({limit}; "
                                                     f"`abray serve {_flag(setting)}`)"})
    return found


def admit(values, settings: Settings, capacity: Optional[dict] = None) -> SweepSpec:
    """The spec of a job this service will run, or ConfigError with every problem. `capacity`: the resources of a
    cluster that cannot grow (CPU, GPU), to refuse trials that could never be placed."""
    if not isinstance(values, dict):
        raise ConfigError(errors=[{"loc": [], "msg": "a sweep spec must be a JSON object of field: value"}],
                          title="invalid sweep spec")
    found = _request_problems(values, settings)
    try:
        spec = parse_spec({k: v for k, v in values.items() if k not in SERVICE_FIELDS}, max_trials=settings.max_trials)
    except ConfigError as err:
        raise ConfigError(errors=found + err.errors, title="invalid sweep spec") from None
    found += _limit_problems(spec, settings)
    if not found and capacity is not None:
        from ..sweeps.tune import check_fits

        try:
            check_fits(spec.trials, capacity)
        except ConfigError as err:
            found += err.errors
    if found:
        raise ConfigError(errors=found, title="invalid sweep spec")
    return spec
