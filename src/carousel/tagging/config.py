"""The settings of a tagging run (``carousel train tagger``): the loop's
:class:`~carousel.train.TrainSettings` with the tagger's defaults, plus the data and the
model.  Presets ``tagger-ewt`` and ``tagger-chunk`` are TOML files in ``carousel/presets/``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from carousel.cells import get_cell
from carousel.config import check_at_least
from carousel.train import TrainSettings


@dataclasses.dataclass(frozen=True)
class TaggerConfig(TrainSettings):
    """Tagger and training settings; any field is a ``--field-name`` option.

    ``tagset``: which annotation to learn (``upos``/``xpos`` of CoNLL-U, ``chunk``/``pos`` of
    CoNLL-2000).  ``max_train_sentences`` > 0 trains on only the first that many (quick
    runs).  ``dev_fraction``: for data without a dev file (CoNLL-2000), the share of the
    training sentences held out (the last ones) for model selection.
    """

    #: settings that define the model's architecture
    ARCHITECTURE: ClassVar[tuple[str, ...]] = (
        "tagset",
        "cell",
        "bidirectional",
        "num_layers",
        "hidden_size",
        "word_dim",
        "char_dim",
        "char_features",
        "min_count",
    )

    # data
    data: str | None = None  # folder of CoNLL-U or CoNLL-2000 files (see load_tagging_data)
    tagset: str = "upos"
    max_train_sentences: int = 0
    dev_fraction: float = 0.1
    min_count: int = 2  # rarer words (lower-cased) are <unk>
    # model
    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 1
    hidden_size: int = 128
    word_dim: int = 100
    char_dim: int = 32
    char_features: int = 64
    dropout: float = 0.3
    # optimisation (the loop's fields, with the tagger's defaults: Adam)
    epochs: int = 10
    batch_size: int = 64  # sentences, bucketed by length
    lr: float = 0.002

    def validate(self) -> None:
        super().validate()
        get_cell(self.cell)  # raises for an unknown cell
        check_at_least(
            self,
            1,
            "num_layers",
            "hidden_size",
            "word_dim",
            "char_dim",
            "char_features",
            "min_count",
            "batch_size",
        )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.max_train_sentences < 0:
            raise ValueError(f"max_train_sentences must be ≥ 0; got {self.max_train_sentences}")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be in (0, 1); got {self.dev_fraction}")
