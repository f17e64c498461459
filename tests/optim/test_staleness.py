"""The one definition of delay and staleness (abray.optim.staleness), with every expected value written out by hand."""

import numpy as np
import pytest

from abray.optim.staleness import check_delay, source_version, staleness_at, staleness_summary


def test_update_t_at_delay_d_uses_version_t_minus_d_and_version_0_while_the_pipeline_fills():
    assert [source_version(t, 3) for t in range(7)] == [0, 0, 0, 0, 1, 2, 3]
    assert [source_version(t, 0) for t in range(4)] == [0, 1, 2, 3]
    assert [source_version(t, 1) for t in range(4)] == [0, 0, 1, 2]


def test_the_first_d_updates_are_less_stale_than_d():
    assert [staleness_at(t, 3) for t in range(7)] == [0, 1, 2, 3, 3, 3, 3]
    assert [staleness_at(t, 0) for t in range(4)] == [0, 0, 0, 0]
    assert staleness_at(1000, 8) == 8


@pytest.mark.parametrize("delay", [0, 1, 7, np.int64(5)])
def test_an_integer_delay_is_accepted_as_a_python_int(delay):
    checked = check_delay(delay)
    assert checked == int(delay) and type(checked) is int


@pytest.mark.parametrize("delay", [-1, True, False, 1.0, 2.5, "3", None])
def test_anything_but_an_integer_of_at_least_zero_is_refused(delay):
    with pytest.raises(ValueError, match=rf"^delay must be an integer >= 0, got {repr(delay).replace('.', '[.]')}$"):
        check_delay(delay)


def test_a_staleness_summary_by_hand():
    # 0, 1, 2 while the pipeline fills, then 3 twice: mean 9 / 5
    summary = staleness_summary([0, 1, 2, 3, 3])
    assert summary == {"staleness_mean": 1.8, "staleness_max": 3, "staleness_hist": {0: 1, 1: 1, 2: 1, 3: 2}}
    assert list(summary["staleness_hist"]) == [0, 1, 2, 3]  # in order of staleness
    unordered = staleness_summary(np.array([5, 0, 5, 2]))  # numpy values come back as Python ints
    assert unordered == {"staleness_mean": 3.0, "staleness_max": 5, "staleness_hist": {0: 1, 2: 1, 5: 2}}
    assert list(unordered["staleness_hist"]) == [0, 2, 5]
    assert all(type(k) is int and type(v) is int for k, v in unordered["staleness_hist"].items())
    assert type(unordered["staleness_max"]) is int and type(unordered["staleness_mean"]) is float


def test_no_updates_summarise_to_zero_staleness():
    assert staleness_summary([]) == {"staleness_mean": 0.0, "staleness_max": 0, "staleness_hist": {}}
