"""Allow ``python -m semverkit``."""

from .cli import main

raise SystemExit(main())
