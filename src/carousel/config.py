"""The one config mechanism: typed dataclasses, presets as small TOML files, ``--key value``
overrides on the command line, and a plain-dict form that travels inside every checkpoint.

A job declares its settings as a dataclass of scalar fields (``int``, ``float``, ``str``,
``bool`` or ``X | None``).  Presets live in ``carousel/presets/NAME.toml`` (or any TOML file
given by path) and hold a subset of the fields; what the command line says wins::

    cfg = resolve_config(TrainConfig, preset="char-small", overrides={"lr": 0.01})

:func:`add_config_arguments` adds one ``--field-name`` option per field to an argparse parser
and :func:`overrides_from_args` collects the ones the user gave.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

_SCALARS = (bool, int, float, str)


def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """name -> (scalar type, optional) for every field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = len(args) < len(typing.get_args(tp))
            if len(args) != 1:
                raise TypeError(f"config field {cls.__name__}.{f.name}: unsupported type {tp}")
            tp = args[0]
        if tp not in _SCALARS:
            raise TypeError(f"config field {cls.__name__}.{f.name}: unsupported type {tp}")
        out[f.name] = (tp, optional)
    return out


def _coerce(cls: type, name: str, value: Any, tp: type, optional: bool) -> Any:
    """``value`` as type ``tp`` (from TOML, JSON or a command-line string), or ValueError."""
    where = f"{cls.__name__}.{name}"
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ValueError(f"{where} must be a {tp.__name__}; got none")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"{where} must be an integer; got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where} must be a number; got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string; got {value!r}")
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], base: C | None = None) -> C:
    """``cls`` built from ``data`` (unknown keys and wrong types raise ``ValueError``),
    starting from ``base`` (or the defaults) for the keys ``data`` leaves out."""
    fields = _field_types(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; known: {', '.join(fields)}"
        )
    values = {k: _coerce(cls, k, v, *fields[k]) for k, v in data.items()}
    cfg = dataclasses.replace(base, **values) if base is not None else cls(**values)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def check_at_least(cfg: object, minimum: float, *names: str) -> None:
    """For a config's ``validate``: each named field is ``None`` or at least ``minimum``."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}; got {value}")


def config_to_dict(cfg: object) -> dict[str, Any]:
    """The plain-dict (JSON-ready) form stored in checkpoints."""
    return dataclasses.asdict(cfg)  # type: ignore[arg-type]


def preset_names() -> list[str]:
    """The built-in presets (files ``carousel/presets/*.toml``)."""
    folder = resources.files("carousel") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The settings of a built-in preset by name, or of a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"cannot read preset file {path}: {err.strerror}") from err
    else:
        resource = resources.files("carousel") / "presets" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ValueError(
                f"unknown preset {name_or_path!r}; built in: {', '.join(preset_names())} "
                "(or give a .toml file's path)"
            )
        text = resource.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset {name_or_path}: not valid TOML ({err})") from err


def resolve_config(
    cls: type[C], preset: str | None = None, overrides: dict[str, Any] | None = None
) -> C:
    """Defaults, then the preset, then the overrides (the command line)."""
    cfg = config_from_dict(cls, load_preset(preset)) if preset else config_from_dict(cls, {})
    return config_from_dict(cls, overrides or {}, base=cfg)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name VALUE`` option per field of ``cls``; values stay strings here and
    are typed by :func:`config_from_dict`, so presets and the command line agree."""
    group = parser.add_argument_group(f"{cls.__name__} settings (override the preset)")
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(
            flag,
            dest=f"cfg__{f.name}",
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=f"(default {default})",
        )


def add_run_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    preset_help: str,
    out_help: str = "run folder to create (default runs/PRESET)",
) -> None:
    """A training job's options: ``--preset``, ``--out``, ``--resume``, ``--no-progress``,
    then :func:`add_config_arguments`'s for ``cls``."""
    parser.add_argument("--preset", help=preset_help)
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN exactly")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    add_config_arguments(parser, cls)


def set_threads(args: argparse.Namespace) -> None:
    """Torch's thread count from ``--threads``, where given (it must be positive)."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive; got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The settings the user gave on the command line, by field name."""
    return {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__")}
