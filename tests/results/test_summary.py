"""The one summary: grouped by every swept field except seed, accuracy in percent."""

import math

import pandas as pd
import pytest

from abray.results import summarize
from abray.results.report import summary_table
from abray.results.summary import grouping_columns
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
