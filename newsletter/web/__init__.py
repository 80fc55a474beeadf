"""The web side: feeds over HTTP, archived issues, day pages, subscribe, unsubscribe, preferences.

``newsletter serve`` runs :func:`create_app` on uvicorn. See :mod:`newsletter.web.app`.
"""

from __future__ import annotations

from newsletter.web.app import create_app

__all__ = ["create_app"]
