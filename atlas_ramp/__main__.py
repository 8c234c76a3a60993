"""``python -m atlas_ramp``: the same as the ``atlas-ramp`` command."""

from atlas_ramp.cli import main

if __name__ == "__main__":  # importing this module (pkgutil's walks) runs nothing
    raise SystemExit(main())
