"""The one config mechanism: dataclass defaults < preset < command line, typed and checked."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from carousel.config import (
    add_config_arguments,
    config_from_dict,
    config_to_dict,
    load_preset,
    overrides_from_args,
    preset_names,
    resolve_config,
)


@dataclasses.dataclass(frozen=True)
class Cfg:
    cell: str = "lstm"
    hidden_size: int = 8
    lr: float = 0.1
    tie: bool = False
    clip: float | None = None

    def validate(self):
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be positive; got {self.hidden_size}")


def test_layers_of_settings(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('cell = "gru"\nhidden_size = 32\nclip = 5\n')
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Cfg)
    args = parser.parse_args(["--hidden-size", "64", "--tie", "true", "--lr", "1e-3"])
    cfg = resolve_config(Cfg, str(preset), overrides_from_args(args))
    assert cfg == Cfg(cell="gru", hidden_size=64, lr=1e-3, tie=True, clip=5.0)
    assert config_from_dict(Cfg, config_to_dict(cfg)) == cfg  # the checkpoint round trip
    assert resolve_config(Cfg, None, {"clip": "none"}).clip is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hidden": 3}, "unknown Cfg setting.* hidden; known: cell, hidden_size"),
        ({"hidden_size": "many"}, "Cfg.hidden_size must be an integer; got 'many'"),
        ({"hidden_size": 2.5}, "must be an integer"),
        ({"lr": "fast"}, "Cfg.lr must be a number"),
        ({"tie": "maybe"}, "Cfg.tie must be true or false"),
        ({"cell": 3}, "Cfg.cell must be a string"),
        ({"lr": None}, "Cfg.lr must be a float; got none"),
        ({"hidden_size": 0}, "hidden_size must be positive"),
    ],
)
def test_bad_settings_name_what_was_expected(data, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(Cfg, data)


def test_presets(tmp_path):
    assert "char-small" in preset_names()
    assert load_preset("char-small")["cell"] == "lstm"
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; built in: .*char-small"):
        load_preset("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("cell = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_preset(str(bad))
    with pytest.raises(ValueError, match="cannot read preset file"):
        load_preset(str(tmp_path / "missing.toml"))
