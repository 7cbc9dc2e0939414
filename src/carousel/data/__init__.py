"""Data for carousel's jobs: text corpora and batching (:mod:`carousel.data.corpora`,
:mod:`carousel.data.batching`) and the long-time-lag task generators
(:mod:`carousel.data.tasks`)."""

from carousel.data.tasks import TASKS, Batch, TaskSpec, get_task, make_batch

__all__ = ["TASKS", "Batch", "TaskSpec", "get_task", "make_batch"]
