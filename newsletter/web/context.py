"""What every request handler shares: the application, the form signer, the templates, the
background sender of confirmation emails and the request rate limits.

One :class:`WebContext` per app. Handlers are plain functions of it: they parse the request,
call one :class:`~newsletter.app.Newsletter` method and render the answer, so tests build an
app with an in-memory mailer and a fixed clock and nothing else changes.
"""

from __future__ import annotations

import logging
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from jinja2 import Environment
from starlette.responses import HTMLResponse

from newsletter.app import Newsletter
from newsletter.config import Settings
from newsletter.domain import SiteInfo
from newsletter.render_html import make_environment
from newsletter.web.ratelimit import RateLimits
from newsletter.web.security import FormSigner
from newsletter.web.sender import ConfirmationSender

log = logging.getLogger(__name__)


@dataclass
class WebContext:
    app: Newsletter
    signer: FormSigner
    owns_app: bool = True
    #: Sends the confirmation emails off the request threads (see newsletter.web.sender).
    sender: ConfirmationSender = field(init=False)
    #: Request rate limits of this process on subscribe and confirm (newsletter.web.ratelimit).
    limits: RateLimits = field(init=False)

    def __post_init__(self) -> None:
        self.sender = ConfirmationSender(self.app.send_confirmation, self.app.withdraw_confirmation)
        self.limits = RateLimits(self.settings.web)

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def site(self) -> SiteInfo:
        return self.settings.site

    @cached_property
    def templates(self) -> Environment:
        """Jinja2 over the packaged ``templates/web`` (``templates_dir/web`` first when set):
        autoescape on for ``.html.j2``, off for ``.txt.j2``."""
        return make_environment(self.settings.templates_dir, "web")

    @cached_property
    def timezones(self) -> list[str]:
        """For the timezone field's suggestions; validation is make_spec's, not this list's."""
        return sorted(zoneinfo.available_timezones())

    def now(self) -> datetime:
        return self.app.clock()

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

    def close(self) -> None:
        """Shutdown: let queued confirmation emails go out (bounded wait), then close the app."""
        self.sender.close()
        if self.owns_app:
            self.app.close()
