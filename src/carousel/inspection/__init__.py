"""Look inside a trained network (``carousel inspect``): every gate, the internal state s and
the output h of each layer and direction at every step, recorded on the reference path
(:mod:`~carousel.inspection.record`); text features and the units that follow them
(:mod:`~carousel.inspection.features`); a self-contained HTML page
(:mod:`~carousel.inspection.page`); the gate-saturation scatter and a heatmap of units
(:mod:`~carousel.inspection.figures`); the long-lag picture of the carousel at work
(:mod:`~carousel.inspection.lag`).

Named ``inspection``, not ``inspect``, to stay clear of the standard library's module.
"""

from carousel.inspection.features import FEATURES, Unit, find_units, rank_units, text_features
from carousel.inspection.record import Recording, record

__all__ = ["FEATURES", "Recording", "Unit", "find_units", "rank_units", "record", "text_features"]
