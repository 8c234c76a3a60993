"""``python -m atlas_ramp``: the same as the ``atlas-ramp`` command."""

from atlas_ramp.cli import main

raise SystemExit(main())
