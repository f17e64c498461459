"""Results: the one tidy schema (`schema`), reading Tune experiments into it (`experiment`), summaries
(`summary`), figures (`plots`) and the `abray results` report (`report`)."""

from .experiment import load_tune_experiment, trial_status
from .schema import CONFIG_COLUMNS, METRIC_COLUMNS, epochs_frame, metric_row, write_frame
from .summary import final_epochs, summarize

__all__ = ["CONFIG_COLUMNS", "METRIC_COLUMNS", "epochs_frame", "final_epochs", "load_tune_experiment", "metric_row",
           "summarize", "trial_status", "write_frame"]
