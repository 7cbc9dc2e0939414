"""The long-time-lag experiments: the 1997 paper's tasks trained to its success criteria
through the shared loop (:mod:`carousel.lag.train`), sweeps (:mod:`carousel.lag.sweep`) and
the measured gradient flow (:mod:`carousel.lag.gradflow`)."""

from carousel.lag.config import LagConfig
from carousel.lag.criteria import correct
from carousel.lag.gradflow import GradflowConfig, run_gradflow
from carousel.lag.sweep import run_sweep
from carousel.lag.train import LagJob, LagResult, describe, load_lag, run_lag

__all__ = [
    "GradflowConfig",
    "LagConfig",
    "LagJob",
    "LagResult",
    "correct",
    "describe",
    "load_lag",
    "run_gradflow",
    "run_lag",
    "run_sweep",
]
