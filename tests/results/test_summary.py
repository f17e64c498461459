"""The one summary: grouped by every swept field except seed, accuracy in percent."""

import math

import pandas as pd
import pytest

from abray.results import summarize
from abray.results.report import summary_table
from abray.results.summary import final_epochs, grouping_columns, setting_label
from support.frames import frame_of, trial


def test_a_rho_sweep_is_not_pooled_as_if_rho_were_a_seed():
    # the frame: rho 0.5 and 1.5 at D = 0 used to give one row, mean 0.54 and std 0.62 "over seeds"
    frame = frame_of(trial("a", 0.10, rho=0.5), trial("b", 0.98, rho=1.5))
    summary = summarize(frame)
    assert list(summary.columns) == ["optimizer", "delay", "rho", "accuracy_mean", "accuracy_std", "count", "diverged"]
    assert summary.rho.tolist() == [0.5, 1.5] and summary["count"].tolist() == [1, 1]
    assert summary.accuracy_mean.tolist() == pytest.approx([10.0, 98.0])  # percent, each setting its own
    assert summary.accuracy_std.isna().all()  # one trial: no spread to report


def test_seeds_alone_are_pooled_into_mean_and_std():
    frame = frame_of(*(trial(f"t{o}{d}{s}", acc, optimizer=o, delay=d, seed=s)
                       for o, d, accs in [("ab", 0, (0.90, 0.96)), ("sgdm", 8, (0.10, 0.30))]
                       for s, acc in enumerate(accs)))
    summary = summarize(frame)
    assert grouping_columns(frame) == ["optimizer", "delay"]
    assert list(summary[["optimizer", "delay"]].itertuples(index=False, name=None)) == [("ab", 0), ("sgdm", 8)]
    assert summary.accuracy_mean.tolist() == pytest.approx([93.0, 20.0])
    # the sample standard deviation of two values a, b is |a - b| / sqrt(2)
    assert summary.accuracy_std.tolist() == pytest.approx([6 / math.sqrt(2), 20 / math.sqrt(2)])
    assert summary["count"].tolist() == [2, 2] and summary.diverged.tolist() == [0, 0]


def test_every_swept_field_groups_and_divergences_are_counted():
    frame = frame_of(trial("a", 0.9, lr=0.01, batch_size=32, seed=0), trial("b", 0.8, lr=0.01, batch_size=32, seed=1),
                     trial("c", 0.1, lr=0.1, batch_size=32, diverged=True), trial("d", 0.7, lr=0.1, batch_size=64))
    summary = summarize(frame)
    assert grouping_columns(frame) == ["optimizer", "delay", "lr", "batch_size"]
    rows = {(r.lr, r.batch_size): r for r in summary.itertuples()}
    assert set(rows) == {(0.01, 32), (0.1, 32), (0.1, 64)}
    assert rows[(0.01, 32)].count == 2 and rows[(0.01, 32)].accuracy_mean == pytest.approx(85.0)
    assert rows[(0.1, 32)].diverged == 1 and rows[(0.1, 64)].diverged == 0


def test_the_text_table_shows_percent_with_the_grouping_columns():
    frame = frame_of(trial("a", 0.5, rho=0.5, seed=0), trial("b", 0.7, rho=0.5, seed=1), trial("c", 0.981, rho=1.5))
    text = summary_table(summarize(frame))
    header, first, second = text.splitlines()
    assert header.split() == ["optimizer", "delay", "rho", "accuracy", "(%)", "trials", "diverged"]
    assert "60.0 ± 14.1" in first and first.split()[:3] == ["ab", "0", "0.5"]
    assert "98.1" in second and "±" not in second


def test_an_empty_frame_summarises_to_no_rows():
    assert summarize(pd.DataFrame()).empty


def test_each_trials_last_epoch_is_taken_whatever_order_its_rows_come_in():
    frame = frame_of(trial("a", 0.9, epochs=3), trial("b", 0.4, epochs=2, seed=1), trial("c", 0.7, epochs=4, seed=2))
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert shuffled.epoch.tolist() != sorted(shuffled.epoch)  # the rows really are out of order
    last = final_epochs(shuffled).sort_values("trial_id")
    assert last.trial_id.tolist() == ["a", "b", "c"] and last.epoch.tolist() == [3, 2, 4]
    assert last.test_accuracy.tolist() == [0.9, 0.4, 0.7]
    summary = summarize(shuffled)
    assert summary["count"].tolist() == [3] and summary.accuracy_mean.tolist() == pytest.approx([200 / 3])


def test_without_trial_ids_a_trial_is_its_config():
    # what `abray train --output` writes: no job or trial id, one config per run
    frame = frame_of(trial("a", 0.9, seed=0), trial("b", 0.5, seed=1)).drop(columns=["job_id", "trial_id"])
    last = final_epochs(frame)
    assert len(last) == 2 and sorted(last.test_accuracy) == [0.5, 0.9] and set(last.epoch) == {2}


def test_a_frame_written_before_a_config_column_existed_still_summarises():
    # `abray train --output` files from before server_shards was a column
    frame = frame_of(trial("a", 0.9, seed=0), trial("b", 0.5, seed=1)).drop(columns=["job_id", "trial_id",
                                                                                      "server_shards"])
    assert len(final_epochs(frame)) == 2 and summarize(frame)["count"].tolist() == [2]


def test_only_a_trials_last_epoch_counts_as_diverged():
    frame = frame_of(trial("a", 0.1, diverged=True), trial("b", 0.9, seed=1), trial("c", 0.2, seed=2, diverged=True))
    frame.loc[(frame.trial_id == "b") & (frame.epoch == 1), "diverged"] = True  # an early epoch: not the result
    summary = summarize(frame)
    assert summary.diverged.tolist() == [2] and summary["count"].tolist() == [3]


def test_a_setting_is_labelled_by_its_optimizer_and_what_else_varies():
    row = {"optimizer": "ab", "delay": 4, "rho": 0.5, "lr": 0.1}
    assert setting_label(row, ["optimizer", "delay", "rho", "lr"]) == "ab rho=0.5 lr=0.1"
    assert setting_label(row, ["optimizer", "delay"]) == "ab"


def test_two_trials_of_one_config_are_two_trials_when_they_have_ids():
    # a setting run twice (a repeated job): each trial id is its own trial, not one config's
    frame = frame_of(trial("a", 0.9), trial("b", 0.5))
    assert final_epochs(frame).trial_id.tolist() == ["a", "b"]
    assert summarize(frame)["count"].tolist() == [2]


def test_a_missing_config_value_is_a_setting_of_its_own_and_never_dropped():
    # frames read from older experiments can lack a config value: its trials still count, as their own setting
    frame = frame_of(trial("a", 0.9, rho=0.5), trial("b", 0.5, rho=0.5, seed=1), trial("c", 0.3, rho=0.5, seed=2))
    frame.loc[frame.trial_id == "c", "rho"] = None
    assert grouping_columns(frame) == ["optimizer", "delay", "rho"]
    summary = summarize(frame)
    assert summary["count"].tolist() == [2, 1] and summary.rho.iloc[0] == 0.5 and pd.isna(summary.rho.iloc[1])
    assert summary.accuracy_mean.tolist() == pytest.approx([70.0, 30.0])
    without_ids = frame.drop(columns=["job_id", "trial_id"]).assign(dc_lambda=None)
    assert sorted(final_epochs(without_ids).test_accuracy) == [0.3, 0.5, 0.9]


def test_settings_come_sorted_and_divergences_are_whole_numbers():
    frame = frame_of(trial("z", 0.2, lr=0.3, diverged=True), trial("y", 0.4, lr=0.1), trial("x", 0.6, lr=0.2))
    summary = summarize(frame)
    assert summary.lr.tolist() == [0.1, 0.2, 0.3] and summary.accuracy_mean.tolist() == pytest.approx([40, 60, 20])
    assert summary.diverged.tolist() == [0, 0, 1] and summary.diverged.dtype.kind == "i"
    assert list(summarize(frame.iloc[:0]).columns) == ["optimizer", "delay", "accuracy_mean", "accuracy_std",
                                                        "count", "diverged"]
