"""The errors carousel raises at its boundary, catchable as what torch.nn raises.

carousel's contract is a ``ValueError`` naming what was expected and what came.  torch.nn
raises ``RuntimeError`` for the same bad shapes (``input.size(-1) must be equal to
input_size``, ``Expected hidden size ...``), ``ValueError`` for bad constructor values and
``TypeError`` for arguments of the wrong type.  So that code written against either keeps
working:

- :class:`ArgumentError` is both a ``ValueError`` and a ``RuntimeError``;
- :class:`ArgumentTypeError` is a ``TypeError`` and an :class:`ArgumentError` (so a
  ``ValueError`` too).

Messages keep carousel's "expected … got …" and use torch's wording where PyTorch's own
tests match on it.  The CLI prints either as one line (both are ``ValueError``).
"""

from __future__ import annotations


class ArgumentError(ValueError, RuntimeError):
    """A bad argument at carousel's boundary (a ``ValueError`` and a ``RuntimeError``)."""


class ArgumentTypeError(TypeError, ArgumentError):
    """An argument of the wrong type (a ``TypeError``, ``ValueError`` and ``RuntimeError``)."""


__all__ = ["ArgumentError", "ArgumentTypeError"]
