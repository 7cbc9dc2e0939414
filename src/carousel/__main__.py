"""``python -m carousel`` (and ``torchrun -m carousel``) runs the command-line tool."""

from carousel.cli import main

raise SystemExit(main())
