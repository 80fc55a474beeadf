"""What every request handler shares: settings, the store, the mailer, the clock, templates.

One :class:`WebContext` per app. Handlers are plain functions of it, so tests build an app
with an in-memory mailer and a fixed clock and nothing else changes.
"""

from __future__ import annotations

import logging
import threading
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from jinja2 import Environment
from starlette.responses import HTMLResponse

from newsletter.config import Settings
from newsletter.deliver import Envelope, Mailer
from newsletter.domain import SiteInfo
from newsletter.render_html import make_environment
from newsletter.store import Store
from newsletter.web.security import FormSigner

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass
class WebContext:
    settings: Settings
    store: Store
    clock: Clock
    signer: FormSigner
    mailer_factory: Callable[[], Mailer]
    _mailer: Mailer | None = None
    _mailer_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def site(self) -> SiteInfo:
        return self.settings.site

    @cached_property
    def templates(self) -> Environment:
        """Jinja2 over ``templates/web``: autoescape on for ``.html.j2``, off for ``.txt.j2``."""
        return make_environment(self.settings.templates_dir / "web")

    @cached_property
    def timezones(self) -> list[str]:
        """For the timezone field's suggestions; validation is make_spec's, not this list's."""
        return sorted(zoneinfo.available_timezones())

    def now(self) -> datetime:
        return self.clock()

    def page(
        self,
        name: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **values: Any,
    ) -> HTMLResponse:
        """Render a web template with the values every page uses (site name, feed links)."""
        html = self.templates.get_template(name).render(site_name=self.site.name, **values)
        return HTMLResponse(html, status_code=status, headers=dict(headers or {}))

    def send_mail(self, envelope: Envelope, message: bytes) -> str:
        """Send through the one mailer of this app, one message at a time.

        The mailer is created on first use (an SMTP server is only contacted when someone
        subscribes) and serialized by a lock: an SMTP session is one connection and request
        handlers run in a thread pool.
        """
        with self._mailer_lock:
            if self._mailer is None:
                self._mailer = self.mailer_factory()
            return self._mailer.send(envelope, message)

    def close(self, *, close_mailer: bool) -> None:
        with self._mailer_lock:
            if self._mailer is not None and close_mailer:
                self._mailer.close()
            self._mailer = None
        self.store.close()
