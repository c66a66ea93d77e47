"""``python -m vaelab``: the same command as the ``vaelab`` console script."""

from vaelab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
