"""The tidy schema (abray.results.schema) and Tune experiments read into it, with frames and files made by hand: one
row per (trial, epoch), a diverged epoch carrying its step and every other epoch none, in every format it is
written to and read back from."""

import json
from dataclasses import asdict

import pandas as pd
import pytest

from abray.results import CONFIG_COLUMNS, METRIC_COLUMNS, load_tune_experiment, trial_status
from abray.results.schema import (FORMATS, empty_frame, epochs_frame, export_path, frame_bytes, metric_row,
                                  metric_types, write_frame)
from abray.training.config import ConfigError, TrainConfig
from abray.training.epochs import EpochMetrics


def epoch(n: int, diverged_step=None, hist=None) -> EpochMetrics:
    return EpochMetrics(epoch=n, steps=10 * n, train_loss=1.0 / n, test_loss=2.0 / n, test_accuracy=0.1 * n,
                        wall_time=0.5, lr_now=0.01, diverged=diverged_step is not None, diverged_step=diverged_step,
                        staleness_mean=1.5, staleness_max=3, staleness_hist=hist or {3: 6, 0: 4})


def test_each_metric_columns_type_and_whether_it_may_be_missing():
    expected = {"epoch": (int, False), "steps": (int, False), "train_loss": (float, True),
                "test_loss": (float, True), "test_accuracy": (float, True), "wall_time": (float, True),
                "lr_now": (float, True), "diverged": (bool, False), "diverged_step": (int, True),
                "staleness_mean": (float, True), "staleness_max": (int, False), "staleness_hist": (str, False)}
    found = metric_types()
    assert list(found) == METRIC_COLUMNS
    assert {name: found[name] for name in expected} == expected


def test_a_row_holds_the_metric_columns_with_the_histogram_as_json():
    row = metric_row(epoch(2))
    assert list(row) == METRIC_COLUMNS
    assert row["staleness_hist"] == '{"3": 6, "0": 4}' and json.loads(row["staleness_hist"]) == {"3": 6, "0": 4}
    assert row["epoch"] == 2 and row["diverged_step"] is None and row["diverged"] is False
    # a Tune report passes through, its other keys dropped and the missing ones None
    report = {**row, "trial_id": "t1", "timestamp": 123, "training_iteration": 2}
    assert metric_row(report) == row
    assert metric_row({"epoch": 1, "staleness_hist": {4: 2}}) == {
        **{c: None for c in METRIC_COLUMNS}, "epoch": 1, "staleness_hist": '{"4": 2}'}
    assert metric_row({"epoch": 1})["staleness_hist"] is None


def two_trials() -> pd.DataFrame:
    config = TrainConfig(optimizer="sgdm", delay=4, lr=0.5).model_dump()
    calm = epochs_frame(config, [epoch(1), epoch(2)], job_id="j", trial_id="calm")
    wild = epochs_frame(config, [epoch(1), epoch(2, diverged_step=17)], job_id="j", trial_id="wild")
    return pd.concat([calm, wild], ignore_index=True)


def test_a_frame_has_the_ids_then_config_then_metric_columns_and_diverged_step_is_empty_unless_diverged():
    frame = two_trials()
    assert list(frame.columns) == ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
    assert frame.trial_id.tolist() == ["calm", "calm", "wild", "wild"]
    assert frame.optimizer.tolist() == ["sgdm"] * 4 and frame.delay.tolist() == [4] * 4 and frame.lr.tolist() == [0.5] * 4
    assert str(frame.diverged_step.dtype) == "Int64"
    assert frame.diverged_step.isna().tolist() == [True, True, True, False] and frame.diverged_step.iloc[3] == 17
    assert frame.diverged.tolist() == [False, False, False, True]
    assert frame.epoch.tolist() == [1, 2, 1, 2] and frame.test_accuracy.tolist() == pytest.approx([0.1, 0.2] * 2)
    assert list(empty_frame("job_id").columns) == ["job_id"] + CONFIG_COLUMNS + METRIC_COLUMNS


@pytest.mark.parametrize("fmt,read", [("csv", pd.read_csv), ("parquet", pd.read_parquet),
                                      ("json", lambda f: pd.read_json(f, orient="records"))])
def test_every_download_format_reads_back_the_same_rows_and_the_empty_diverged_steps(fmt, read):
    import io

    frame = two_trials()
    back = read(io.BytesIO(frame_bytes(frame, fmt)))
    assert list(back.columns) == list(frame.columns) and len(back) == 4
    assert back.diverged_step.isna().tolist() == [True, True, True, False] and back.diverged_step.iloc[3] == 17
    assert back.test_loss.tolist() == pytest.approx([2.0, 1.0, 2.0, 1.0])
    assert [json.loads(h) for h in back.staleness_hist] == [{"3": 6, "0": 4}] * 4
    assert set(FORMATS) == {"json", "csv", "parquet"}


def test_an_unknown_download_format_is_refused():
    with pytest.raises(ValueError, match="format must be one of json, csv, parquet, got 'xlsx'"):
        frame_bytes(two_trials(), "xlsx")


def test_a_frame_is_written_where_its_suffix_says_and_reads_back(tmp_path):
    frame = two_trials()
    parquet = write_frame(frame, tmp_path / "deep" / "er" / "r.parquet")
    csv = write_frame(frame, str(tmp_path / "r.csv"))
    assert parquet == tmp_path / "deep" / "er" / "r.parquet" and csv == tmp_path / "r.csv"
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), frame)
    back = pd.read_csv(csv)
    assert back.trial_id.tolist() == frame.trial_id.tolist() and back.diverged_step.isna().sum() == 3


def test_an_export_path_must_name_a_csv_or_parquet_file(tmp_path):
    assert export_path(str(tmp_path / "a.csv")) == tmp_path / "a.csv"
    with pytest.raises(ConfigError, match=r"export: '.*a\.xlsx' must end in \.csv or \.parquet"):
        export_path(tmp_path / "a.xlsx")
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(ConfigError, match=r"export: '.*d\.parquet' is a directory; name a \.csv or \.parquet file"):
        export_path(tmp_path / "d.parquet")
    with pytest.raises(ConfigError, match="must end in .csv or .parquet"):
        write_frame(two_trials(), tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()


def write_trial(folder, config: dict, reports: list[dict], error: str = None):
    """A trial's folder as Tune writes it: params.json, result.json (one report a line, with Tune's own keys),
    error.txt when it crashed."""
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(config))
    if reports is not None:
        (folder / "result.json").write_text("".join(json.dumps({**r, "timestamp": 1, "training_iteration": i + 1})
                                                    + "\n" for i, r in enumerate(reports)))
    if error is not None:
        (folder / "error.txt").write_text(error)


def test_a_tune_experiment_reads_into_the_schema_with_each_trials_divergence(tmp_path):
    experiment = tmp_path / "sweep"
    base = {"optimizer": "ab", "epochs": 2, "batch_size": 64}
    write_trial(experiment / "trainable_a", {**base, "delay": 0},
                [{**metric_row(epoch(n)), "trial_id": "a"} for n in (1, 2)])
    write_trial(experiment / "trainable_b", {**base, "delay": 8, "lr": 1e6},
                [{**metric_row(epoch(1, diverged_step=5)), "trial_id": "b"}])
    write_trial(experiment / "trainable_c", {**base, "device": "cuda"}, None,
                error="Traceback (most recent call last):\n  ...\nRuntimeError: no CUDA here\n")
    write_trial(experiment / "trainable_d", {**base, "seed": 3}, [])  # started, reported nothing yet

    frame = load_tune_experiment(experiment)
    assert list(frame.columns) == ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
    assert frame.job_id.unique().tolist() == ["sweep"] and frame.trial_id.tolist() == ["a", "a", "b"]
    assert frame.delay.tolist() == [0, 0, 8] and frame.lr.tolist() == [0.03, 0.03, 1e6]  # the run defaults filled in
    assert frame.epochs.tolist() == [2, 2, 2] and frame.schedule.tolist() == ["cosine"] * 3
    assert frame.diverged.tolist() == [False, False, True]
    assert frame.diverged_step.isna().tolist() == [True, True, False] and frame.diverged_step.iloc[2] == 5

    status = trial_status(experiment)
    assert status.trial_dir.tolist() == ["trainable_a", "trainable_b", "trainable_c", "trainable_d"]
    assert status.failed.tolist() == [False, False, True, False] and status.epochs_reported.tolist() == [2, 1, 0, 0]
    assert status.error.isna().tolist() == [True, True, False, True]
    assert status.error.iloc[2] == "RuntimeError: no CUDA here"  # the error's last line


def test_an_experiment_without_reports_is_an_empty_frame_of_the_schema(tmp_path):
    write_trial(tmp_path / "x" / "trainable_a", {"optimizer": "sgdm"}, None)
    frame = load_tune_experiment(tmp_path / "x")
    assert frame.empty and list(frame.columns) == ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
    assert asdict(epoch(1))["staleness_hist"] == {3: 6, 0: 4}  # the epochs themselves keep a dict


def test_a_filtered_frame_downloads_and_writes_without_its_index(tmp_path):
    import io

    part = two_trials().iloc[[1, 3]]  # rows 1 and 3 of four: an index a plain write would carry along
    records = json.loads(frame_bytes(part, "json"))
    assert isinstance(records, list) and [r["trial_id"] for r in records] == ["calm", "wild"]
    assert list(records[1]) == list(part.columns) and records[1]["diverged_step"] == 17
    for fmt, read in [("parquet", pd.read_parquet), ("csv", pd.read_csv)]:
        back = read(io.BytesIO(frame_bytes(part, fmt)))
        assert list(back.columns) == list(part.columns) and back.index.tolist() == [0, 1], fmt
        written = read(write_frame(part, tmp_path / f"part.{fmt}"))
        assert list(written.columns) == list(part.columns) and written.index.tolist() == [0, 1], fmt


def test_a_run_without_epochs_is_an_empty_frame_of_the_schema():
    frame = epochs_frame(TrainConfig().model_dump(), [], job_id="j", trial_id="t")
    assert frame.empty and list(frame.columns) == ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
