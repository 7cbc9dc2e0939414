"""Data for carousel's jobs: text corpora and batching (:mod:`carousel.data.corpora`,
:mod:`carousel.data.batching`), the long-time-lag task generators (:mod:`carousel.data.tasks`)
and readers for CoNLL-U / CoNLL-2000 (:mod:`carousel.data.conll`) and UNIPEN
(:mod:`carousel.data.unipen`)."""

from carousel.data.tasks import TASKS, Batch, TaskSpec, get_task, make_batch

__all__ = ["TASKS", "Batch", "TaskSpec", "get_task", "make_batch"]
