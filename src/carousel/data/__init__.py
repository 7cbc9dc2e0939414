"""Data for carousel's jobs: text corpora and batching (:mod:`carousel.data.corpora`,
:mod:`carousel.data.batching`), the long-time-lag task generators (:mod:`carousel.data.tasks`),
the Neural Turing Machine's memory tasks (:mod:`carousel.data.memory_tasks`) and readers for
CoNLL-U / CoNLL-2000 (:mod:`carousel.data.conll`) and UNIPEN (:mod:`carousel.data.unipen`)."""

from carousel.data.memory_tasks import MEMORY_TASKS, MemoryBatch, MemoryTask, memory_batch
from carousel.data.tasks import TASKS, Batch, TaskSpec, get_task, make_batch

__all__ = [
    "MEMORY_TASKS",
    "TASKS",
    "Batch",
    "MemoryBatch",
    "MemoryTask",
    "TaskSpec",
    "get_task",
    "make_batch",
    "memory_batch",
]
