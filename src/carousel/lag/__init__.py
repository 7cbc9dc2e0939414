"""The long-time-lag experiments: the 1997 paper's tasks trained to its success criteria
(:mod:`carousel.lag.train`), sweeps (:mod:`carousel.lag.sweep`) and the measured gradient
flow (:mod:`carousel.lag.gradflow`)."""

from carousel.lag.criteria import correct
from carousel.lag.gradflow import GradflowConfig, run_gradflow
from carousel.lag.sweep import run_sweep
from carousel.lag.train import LagConfig, LagResult, describe, run_lag

__all__ = [
    "GradflowConfig",
    "LagConfig",
    "LagResult",
    "correct",
    "describe",
    "run_gradflow",
    "run_lag",
    "run_sweep",
]
