"""The figures of `abray results`: what the axes, lines and legends hold, read back from matplotlib."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from abray.results import plots
from support.frames import frame_of, trial


@pytest.fixture
def sweep() -> pd.DataFrame:
    """SGDM and AB at D in {0, 4, 32}, two seeds; SGDM at D = 32 diverges to 1e14."""
    trials = []
    for optimizer in ("sgdm", "ab"):
        for delay in (0, 4, 32):
            for seed in (0, 1):
                t = trial(f"{optimizer}{delay}{seed}", 0.9 - 0.01 * delay, optimizer=optimizer, delay=delay,
                          seed=seed, epochs=3)
                if optimizer == "sgdm" and delay == 32:
                    t["train_loss"] = [2.3, 1e7, 1e14]
                trials.append(t)
    return frame_of(*trials)


def overlaps(fig, artist, ax) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    a, b = artist.get_window_extent(renderer), ax.get_window_extent(renderer)
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_accuracy_against_delay_ticks_at_the_delays_run_and_draws_chance(sweep):
    fig = plots.accuracy_figure(sweep)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 4, 32]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "4", "32"]
    assert list(ax.get_xticks(minor=True)) == []  # no 10^0, 10^1 in between
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {10.0}  # digits: 10 classes
    legend = ax.get_legend()
    assert {t.get_text() for t in legend.get_texts()} == {"ab", "sgdm", "chance (10%)"}
    assert not overlaps(fig, legend, ax)
    plt.close(fig)


def test_accuracy_lines_are_one_per_swept_setting_not_per_optimizer():
    frame = frame_of(*(trial(f"{r}{d}", 0.5, rho=r, delay=d) for r in (0.5, 1.5) for d in (0, 8)))
    fig = plots.accuracy_figure(frame)
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"ab rho=0.5", "ab rho=1.5", "chance (10%)"}
    plt.close(fig)


def test_a_diverged_curve_does_not_stretch_the_loss_axis(sweep):
    fig = plots.loss_figure(sweep)
    low, high = fig.axes[0].get_ylim()
    largest_first = 2.3  # every trial starts at 1.0 but the diverging ones, at 2.3
    assert high <= 10 * largest_first * 1.25 and low <= 1 / 3  # every trial's last loss, 1/3, is on the axis
    panel_32 = [ax for ax in fig.axes if ax.get_title() == "D = 32"][0]
    assert any("off scale" in t.get_text() for t in panel_32.texts)
    assert not any("off scale" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def test_each_loss_panel_has_its_own_legend_off_the_curves_and_seeds_differ_by_line_style(sweep):
    fig = plots.loss_figure(sweep)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None and not overlaps(fig, legend, ax), ax.get_title()
        assert {t.get_text() for t in legend.get_texts()} == {"ab", "sgdm", "seed 0", "seed 1"}
        styles = {}
        for line in ax.get_lines():
            styles.setdefault(line.get_color(), set()).add(str(line.get_linestyle()))
        assert len(styles) == 2 and all(len(s) == 2 for s in styles.values())  # 2 optimizers x 2 seeds, all distinct
    plt.close(fig)


def test_the_stable_region_plot_says_it_is_the_quadratic_model():
    fig = plots.stable_region_figure(["sgdm"], [0, 1, 4])
    ax = fig.axes[0]
    assert "Quadratic model" in ax.get_title() and "not the trained network" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "4"]
    plt.close(fig)
