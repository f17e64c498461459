"""What the job service accepts (abray.service.admission) and which Host names it answers to, without a server."""

import pytest

from abray.service.admission import admit
from abray.service.settings import Settings, from_env, host_allowed, host_name
from abray.training.config import ConfigError


def refused(values, settings=None, capacity=None) -> list[dict]:
    with pytest.raises(ConfigError) as caught:
        admit(values, settings or Settings(), capacity)
    return caught.value.errors


def test_a_valid_spec_is_admitted_as_parsed():
    spec = admit({"name": "ok", "epochs": 2, "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 8]}}, Settings())
    assert spec.size == 4 and spec.options.name == "ok"


def test_data_folders_and_downloads_are_the_operators_choice(tmp_path):
    spec = {"dataset": "cifar10", "model": "resnet20", "data_root": "/any/dir", "download": True}
    errors = refused(spec)
    assert [e["loc"] for e in errors] == [["data_root"], ["download"]]
    assert "none: its operator names them with `abray serve --data-roots`" in errors[0]["msg"]
    assert "`abray serve --allow-download`" in errors[1]["msg"]
    # the operator names a folder: data_root may be it or lie in it, and nothing outside (.. included)
    allowed = Settings(data_roots=[tmp_path], allow_download=True)
    assert admit(dict(spec, data_root=str(tmp_path / "cifar")), allowed).trials[0]["download"] is True
    assert admit(dict(spec, data_root=str(tmp_path)), allowed).size == 1
    for outside in ("/any/dir", str(tmp_path / ".." / "elsewhere"), str(tmp_path) + "x"):
        assert [e["loc"] for e in refused(dict(spec, data_root=outside), allowed)] == [["data_root"]], outside


def test_the_services_limits_name_each_value_and_the_flag():
    settings = Settings(max_epochs=100, max_delay=32, max_workers=4, max_name_length=10)
    errors = refused({"name": "a-long-name", "epochs": 101, "mode": "free", "workers": 5,
                      "grid": {"delay": [0, 64, 32, 128]}}, settings)
    assert errors == [
        {"loc": ["name"], "msg": "11 characters, more than this service accepts (10)"},
        {"loc": ["epochs"], "msg": "101, more than this service accepts (100; `abray serve --max-epochs`)"},
        {"loc": ["grid", "delay", 1], "msg": "delay=64: more than this service accepts (32; `abray serve --max-delay`)"},
        {"loc": ["grid", "delay", 3], "msg": "delay=128: more than this service accepts (32; `abray serve "
                                             "--max-delay`)"},
        {"loc": ["workers"], "msg": "5, more than this service accepts (4; `abray serve --max-workers`)"},
    ]


def test_fields_the_service_sets_are_refused_with_every_other_problem():
    errors = refused({"storage": "/etc", "output": "/tmp/x.csv", "momentum": 2})
    assert [e["loc"] for e in errors] == [["storage"], ["output"], ["momentum"]]


def test_an_oversized_sweep_gets_one_message_with_the_services_limit():
    grid = {"delay": list(range(100)), "seed": list(range(100)), "lr": [0.01] * 100, "rho": [1.0] * 10}
    assert refused({"grid": grid}, Settings(max_trials=5000)) == [
        {"loc": ["grid"], "msg": "sweep has 10000000 trials, more than this service accepts (5000); shrink the grid"}]
    assert "raise max_trials" not in refused({"grid": grid, "max_trials": 10**6})[0]["msg"]


def test_trials_bigger_than_a_cluster_that_cannot_grow_are_refused():
    spec = {"mode": "free", "workers": 4, "cpus_per_worker": 2, "grid": {"seed": [0, 1]}}
    errors = refused(spec, capacity={"CPU": 8.0, "memory": 1e9})
    assert errors == [{"loc": [], "msg": "a free trial needs 9 CPUs (1 for the trial + 4 workers x 2), but the Ray "
                                         "cluster has 8 and cannot grow; lower workers or cpus_per_worker"}]
    gpus = refused(dict(spec, gpus_per_worker=1, cpus_per_worker=0.5), capacity={"CPU": 8.0})
    assert "needs 4 GPUs" in gpus[0]["msg"] and "cluster has 0" in gpus[0]["msg"]
    assert admit(spec, Settings(), capacity={"CPU": 9.0}).size == 2
    assert admit(spec, Settings(), capacity=None).size == 2  # a cluster that can grow: the trials wait for nodes


@pytest.mark.parametrize("header,name", [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
                                         ("Example.ORG:80", "example.org"), ("localhost", "localhost"),
                                         ("::1", "::1")])
def test_host_names_are_read_without_their_port(header, name):
    assert host_name(header) == name


def test_only_the_services_own_host_names_are_answered():
    names, any_ip = Settings(host="127.0.0.1").served_hosts()
    assert not any_ip
    for ok in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
        assert host_allowed(ok, names, any_ip), ok
    for bad in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.1:8000", "", None):
        assert not host_allowed(bad, names, any_ip), bad
    # listening everywhere: any IP address (which no attacker's name can be rebound to), still no foreign name
    names, any_ip = Settings(host="0.0.0.0").served_hosts()
    assert host_allowed("10.0.0.1:8000", names, any_ip) and host_allowed("[fe80::1]:80", names, any_ip)
    assert not host_allowed("evil.example", names, any_ip)
    # the operator's list replaces the defaults; * answers any
    names, any_ip = Settings(allowed_hosts="abray.lab.example, other.example").served_hosts()
    assert host_allowed("abray.lab.example:443", names, any_ip) and not host_allowed("localhost", names, any_ip)
    assert host_allowed("anything.example", *Settings(allowed_hosts=["*"]).served_hosts())


def test_limits_come_from_the_environment_and_bad_ones_stop_the_service():
    settings = from_env({"ABRAY_MAX_BODY_BYTES": "2048", "ABRAY_ALLOWED_HOSTS": "a.example,b.example",
                         "ABRAY_DATA_ROOTS": "/data/a,/data/b", "ABRAY_MAX_DELAY": "64"})
    assert settings.max_body_bytes == 2048 and settings.allowed_hosts == ["a.example", "b.example"]
    assert [str(p) for p in settings.data_roots] == ["/data/a", "/data/b"] and settings.max_delay == 64
    with pytest.raises(SystemExit, match="ABRAY_MAX_DELAY: Input should be less than or equal to 10000"):
        from_env({"ABRAY_MAX_DELAY": "100000"})
    with pytest.raises(SystemExit, match="ABRAY_MAX_NAME_LENGTH: Input should be less than or equal to 128"):
        from_env({"ABRAY_MAX_NAME_LENGTH": "1000"})  # the job store's column holds 128


def test_the_limits_are_serve_flags_with_their_defaults_in_help(capsys):
    from abray.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default, env in [("--max-body-bytes", "1048576", "ABRAY_MAX_BODY_BYTES"),
                               ("--max-trials", "5000", "ABRAY_MAX_TRIALS"), ("--max-epochs", "1000", "ABRAY_MAX_EPOCHS"),
                               ("--max-delay", "1024", "ABRAY_MAX_DELAY"), ("--max-workers", "64", "ABRAY_MAX_WORKERS"),
                               ("--max-name-length", "128", "ABRAY_MAX_NAME_LENGTH"),
                               ("--data-roots", "none", "ABRAY_DATA_ROOTS"),
                               ("--allow-download", "False", "ABRAY_ALLOW_DOWNLOAD"), ("--port", "8000", None)]:
        help_text = text.split(f"{flag} ", 2)[-1]
        assert f"default: {default}" in help_text.split(" --")[0], flag
        assert env is None or env in help_text.split(" --")[0], flag
    assert "--allowed-hosts" in text and "localhost's names" in text
