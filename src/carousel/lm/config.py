"""The settings of a language-modelling run (``carousel train``): one frozen dataclass of
scalars, the loop's :class:`~carousel.train.TrainSettings` and the model's own.  Presets
``zaremba-small``, ``zaremba-medium``, ``zaremba-large``, ``char-small`` and ``char-medium``
are TOML files in ``carousel/presets/``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from carousel.cells import get_cell
from carousel.config import check_at_least
from carousel.train import TrainSettings


@dataclasses.dataclass(frozen=True)
class LMConfig(TrainSettings):
    """Language model and training settings; any field is a ``--field-name`` option.  The
    loop's own settings (optimizer, schedule, limits, intervals) are :class:`TrainSettings`'s;
    the defaults below are the language model's."""

    #: settings that may change when a run is resumed (how long and how often)
    RESUMABLE: ClassVar[tuple[str, ...]] = (*TrainSettings.RESUMABLE, "valid_tokens")
    #: settings that define the model's architecture
    ARCHITECTURE: ClassVar[tuple[str, ...]] = (
        "level",
        "cell",
        "embed_size",
        "hidden_size",
        "num_layers",
        "tie_weights",
        "layer_norm",
    )
    #: the cell options among the fields: the recurrent layers' regularisers
    CELL_OPTIONS: ClassVar[tuple[str, ...]] = (
        "zoneout_state",
        "zoneout_hidden",
        "recurrent_dropout",
        "update_dropout",
        "weight_drop",
        "layer_norm",
    )

    # data
    data: str = "shakespeare"  # "shakespeare", a UTF-8 text file, or a word-split folder
    level: str = "char"  # "char" or "word"
    valid_data: str | None = None  # explicit validation file (else the split below)
    valid_fraction: float = 0.1  # characters: the last 10 % of the text validates
    # model
    cell: str = "lstm"  # any entry of carousel.CELLS
    embed_size: int | None = None  # default: hidden_size
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.0  # on non-recurrent connections (Zaremba et al.)
    embed_dropout: float = 0.0  # drops whole words' embeddings (Gal & Ghahramani; AWD-LSTM)
    tie_weights: bool = False  # output layer shares the embedding (needs embed = hidden)
    # the recurrent layers' regularisers (cell options; training only): see carousel.cells
    zoneout_state: float = 0.0  # zoneout on the LSTM's internal state s (Krueger et al.)
    zoneout_hidden: float = 0.0  # zoneout on h
    recurrent_dropout: float = 0.0  # variational dropout on h_{t-1} (Gal & Ghahramani)
    update_dropout: float = 0.0  # dropout on the LSTM's cell update g (Semeniuta et al.)
    weight_drop: float = 0.0  # DropConnect on W_hh, one mask a batch (AWD-LSTM)
    layer_norm: bool = False  # layer-normalised LSTM (Ba et al.; haste's LayerNormLSTM)
    # optimisation (the loop's fields, with the language model's defaults)
    optimizer: str = "sgd"
    lr: float = 1.0
    # data layout and evaluation
    batch_size: int = 20  # B streams (global, over all data-parallel processes)
    bptt: int = 35  # truncated-BPTT length
    random_bptt: bool = False
    valid_tokens: int | None = None  # evaluate on at most this many validation tokens
    eval_batch_size: int = 10
    #: "float32", or "bf16": the matrix products in bfloat16 (torch.autocast; the fused
    #: kernels keep float32 state and accumulate in float32; the loss stays float32)
    precision: str = "float32"

    def validate(self) -> None:
        super().validate()
        if self.level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word'; got {self.level!r}")
        get_cell(self.cell, **self.cell_options())  # an unknown cell or option raises
        if self.precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be 'float32' or 'bf16'; got {self.precision!r}")
        check_at_least(
            self,
            1,
            "hidden_size",
            "num_layers",
            "batch_size",
            "bptt",
            "eval_batch_size",
            "embed_size",
        )
        check_at_least(self, 2, "valid_tokens")
        for name in ("dropout", "embed_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)}")
        if self.tie_weights and self.embed_size not in (None, self.hidden_size):
            raise ValueError(
                f"tie_weights needs embed_size = hidden_size = {self.hidden_size}; "
                f"got embed_size {self.embed_size}"
            )

    def cell_options(self) -> dict[str, float | bool]:
        """The cell options that differ from the plain cell's (what the layers are given)."""
        return {k: getattr(self, k) for k in self.CELL_OPTIONS if getattr(self, k)}

    @property
    def embed(self) -> int:
        return self.embed_size or self.hidden_size
