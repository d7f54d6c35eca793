"""``python -m sslmedsam2 <command>``."""

from sslmedsam2.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
