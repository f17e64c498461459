"""`abray` in this process (no Ray, no service): --help lists allowed values and defaults, and user errors end with
a message, not a traceback."""

import os
import re

from abray.cli import build_parser, main, run_label
from abray.training.config import TrainConfig


def subparser(command: str):
    return next(a for a in build_parser()._actions if a.dest == "command").choices[command]


def help_of(command: str) -> str:
    return re.sub(r"\s+", " ", subparser(command).format_help())


def test_train_help_lists_the_allowed_values_and_defaults_of_every_choice():
    text = help_of("train")
    assert "--optimizer OPTIMIZER one of sgdm, ab, dcasgd, staleness_lr, lwp, spike, nesterov_lookahead, ab_lwp; " \
           "default: ab" in text
    assert "--model MODEL one of digits_cnn, digits_cnn_bn, digits_mlp, mnist_cnn, mnist_cnn_bn, teacher_mlp, " \
           "teacher_mlp_bn, seq_transformer, resnet20, resnet32, resnet56, resnet50; default: digits_cnn" in text
    assert "--mode MODE one of simulated, distributed, free; default: simulated" in text
    assert "--schedule SCHEDULE one of constant, cosine, step; default: cosine" in text
    assert "--granularity GRANULARITY one of tensor, global, element; default: tensor" in text
    assert "--dataset DATASET one of digits, mnist10k, teacher, teacher_deep, runner_up, mnist, cifar10, imagenet; " \
           "default: digits" in text
    helps = {a.dest: a.help for a in subparser("train")._actions}
    for name in TrainConfig.model_fields:  # and every field's flag says its default
        assert "default: " in helps[name], name


def test_serve_and_client_help_give_defaults():
    serve = help_of("serve")
    assert "--port PORT default: 8000" in serve and "default: 127.0.0.1" in serve
    assert "--log-level {critical,error,warning,info,debug,trace} default: info" in serve
    assert ("--max-running-jobs MAX_RUNNING_JOBS jobs whose drivers run at once; the rest wait, queued (default: 1; "
            "env ABRAY_MAX_RUNNING_JOBS)") in serve
    assert "--stop stop this storage's service and the local Ray head it started" in serve
    submit = help_of("submit")
    assert "default: $ABRAY_URL, else http://127.0.0.1:8000" in submit and "default: $ABRAY_TOKEN" in submit
    assert "{queued,running,succeeded,failed,cancelled}" in help_of("jobs")


def test_progress_labels_say_how_the_delay_arises():
    assert run_label(TrainConfig(optimizer="ab", mode="free", workers=4)) == "ab free W=4"  # no delay D in free mode
    assert run_label(TrainConfig(optimizer="sgdm", mode="distributed", delay=4, workers=3)) == "sgdm D=4 W=3"
    assert run_label(TrainConfig(delay=8)) == "ab D=8"


def test_user_errors_end_with_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text("grid:\n  delay: [0]\n")
    (tmp_path / "out.parquet").mkdir()
    cases = [
        (("results", "/no/such/dir"), "abray results: /no/such/dir: no such directory"),
        (("results", str(tmp_path)), f"no trial results under {tmp_path}"),
        (("results", str(tmp_path), "--export", "r.xlsx"), "export: 'r.xlsx' must end in .csv or .parquet"),
        (("sweep", "missing.yaml"), "cannot read config file missing.yaml"),
        (("sweep", "sweep.yaml", "--export", "out.parquet"), "is a directory; name a .csv or .parquet file"),
        (("train", "--dataset", "cifar10", "--model", "resnet20", "--data-root", str(tmp_path / "none"),
          "--epochs", "1"), "CIFAR-10 not found under"),
    ]
    for args, message in cases:
        assert main(list(args)) == 2, args  # an exception would fail the test with its traceback
        err = capsys.readouterr().err
        assert err.startswith(f"abray {args[0]}: ") and message in err, (args, err)


def test_serve_refuses_a_database_it_cannot_use_with_a_message(tmp_path, capsys):
    environ = dict(os.environ)  # `abray serve` turns its flags into ABRAY_* variables: put them back after
    try:
        for url, message in [("nosuch://x", "Can't load plugin: sqlalchemy.dialects:nosuch"),
                             ("postgresql://someone:secret@127.0.0.1:1/db", "Connection refused")]:
            assert main(["serve", "--database", url, "--storage", str(tmp_path), "--port", "1"]) == 2
            err = capsys.readouterr().err
            assert err.startswith("abray serve: cannot use the database ") and message in err, err
            assert "secret" not in err  # the password stays hidden
    finally:
        os.environ.clear()
        os.environ.update(environ)
