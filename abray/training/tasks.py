"""The task suite: where AB's defaults are chosen (on some tasks) and where they are reported (on the others).

Each task is a `dataset` + `model` pair that `abray train`, sweeps and the service accept, all offline (shipped or
generated). Every data set is held in memory with a validation split inside its training set: selection reads
validation accuracy on the selection tasks only, and the tables report test accuracy on the report tasks, which
no default was chosen on (`benchmarks/task_suite.py`, `docs/when-ab-works.md`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal



@dataclass(frozen=True)
class Task:
    dataset: str
    model: str
    normalization: Literal["none", "batchnorm", "layernorm"]
    role: Literal["selection", "report"]  # defaults are chosen on selection tasks, claims checked on report tasks

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}"

    @property
    def normalized(self) -> bool:
        return self.normalization != "none"

    def config(self, **values) -> dict:
        """The task's fields of a TrainConfig, plus `values`."""
        return {"dataset": self.dataset, "model": self.model, **values}


SUITE = (
    Task("digits", "digits_cnn", "none", "selection"),
    Task("digits", "digits_cnn_bn", "batchnorm", "selection"),
    Task("teacher", "teacher_mlp", "none", "selection"),
    Task("teacher", "teacher_mlp_bn", "batchnorm", "selection"),
    Task("mnist10k", "mnist_cnn", "none", "report"),
    Task("mnist10k", "mnist_cnn_bn", "batchnorm", "report"),
    Task("teacher_deep", "teacher_mlp", "none", "report"),
    Task("teacher_deep", "teacher_mlp_bn", "batchnorm", "report"),
    Task("runner_up", "seq_transformer", "layernorm", "report"),
)
SELECTION = tuple(t for t in SUITE if t.role == "selection")
REPORT = tuple(t for t in SUITE if t.role == "report")
