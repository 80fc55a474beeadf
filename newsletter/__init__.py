"""newsletter: a daily research-paper newsletter.

Digest files of papers land in an inbox; each paper is kept once; every subscriber
gets a personal, ranked issue by email and in RSS/Atom feeds.
"""

from __future__ import annotations

__version__ = "0.1.0"
