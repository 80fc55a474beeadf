"""The delivery settings a scheduler publishes in the database for its workers.

A worker renders and sends exactly as the scheduler would: the same site name and links, the
same From and List-Id, the same mailer and SMTP server. Rather than asking every worker
machine to carry a copy of the scheduler's settings file (and drift from it: a worker with an
old ``base_url`` sends unsubscribe links that point nowhere), each enqueue pass publishes those
settings in the database, and a worker reads them before each task. What stays the worker's
own: ``database_url`` and ``queue.*`` (needed before it can read anything), the SMTP password
(``NEWSLETTER_SMTP_PASSWORD``: secrets never go into the database), ``templates_dir`` and
``log_level``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from newsletter.config import PASSWORD_ENV, Settings
from newsletter.errors import ConfigError

#: The top-level settings a scheduler publishes for its workers.
PUBLISHED_KEYS = frozenset(
    {"name", "base_url", "timezone", "paper_url_template", "mailer", "outbox_dir", "mail", "smtp"}
)


def published_json(settings: Settings) -> str:
    """The delivery settings as JSON, keys sorted (the same settings give the same text)."""
    data = settings.model_dump(mode="json", include=set(PUBLISHED_KEYS))
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def apply_published(own: Settings, published: str) -> Settings:
    """The settings a worker runs a task with: its own, with the published keys replaced."""
    try:
        data: dict[str, Any] = json.loads(published)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object expected, not {type(data).__name__}")
        if not set(data) <= PUBLISHED_KEYS:
            raise ValueError(f"unexpected keys {sorted(set(data) - PUBLISHED_KEYS)}")
        merged = Settings.model_validate({**own.model_dump(mode="json"), **data})
    except (ValueError, ValidationError) as exc:
        raise ConfigError(
            f"the delivery settings published in the database are not valid for this "
            f"version of newsletter ({exc}); upgrade the worker to the scheduler's version"
        ) from None
    merged._smtp_password = own._smtp_password
    merged._secret_key = own._secret_key
    merged._config_file = own._config_file
    if merged.mailer == "smtp" and merged.smtp.username and not merged.smtp_password:
        raise ConfigError(
            f"the scheduler sends through {merged.smtp.host} as {merged.smtp.username!r}: "
            f"export the SMTP password in {PASSWORD_ENV} for the worker too"
        )
    return merged
