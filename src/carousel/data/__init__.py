"""Data: seeded generators of the long-time-lag tasks (:mod:`carousel.data.tasks`)."""

from carousel.data.tasks import TASKS, Batch, TaskSpec, get_task, make_batch

__all__ = ["TASKS", "Batch", "TaskSpec", "get_task", "make_batch"]
