"""Allow ``python -m newsletter``."""

from __future__ import annotations

from newsletter.cli import main

if __name__ == "__main__":
    main()
