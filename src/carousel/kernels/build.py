"""``python -m carousel.kernels.build [--optional]``: compile the native kernels
(:mod:`carousel.kernels.native`); ``make install`` runs it with ``--optional``, so a machine
without a C++ compiler still installs (one line says so, and the numba kernels serve)."""

from __future__ import annotations

import sys

from carousel.kernels.native import build


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        build()
    except (RuntimeError, OSError) as err:
        print(f"carousel: native kernels not built ({err}); the numba kernels will serve")
        return 0 if "--optional" in args else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
