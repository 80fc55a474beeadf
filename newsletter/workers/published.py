"""The delivery settings a scheduler publishes in the database for its workers.

A worker renders and sends exactly as the scheduler would: the same site name and links, the
same From and List-Id, the same mailer and SMTP server. Rather than asking every worker
machine to carry a copy of the scheduler's settings file (and drift from it: a worker with an
old ``base_url`` sends unsubscribe links that point nowhere), each enqueue pass publishes those
settings in the database, and a worker reads them before each task. What stays the worker's
own: ``database_url`` and ``queue.*`` (needed before it can read anything), the SMTP password
(``NEWSLETTER_SMTP_PASSWORD``: secrets never go into the database), and the paths, which name
files on the worker's own disk: ``outbox_dir``, ``smtp.ca_file`` and ``templates_dir``; and
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
    {"name", "base_url", "timezone", "paper_url_template", "mailer", "mail", "smtp"}
)
#: Keys inside the published tables that stay each worker's own (paths on its own disk).
_OWN_SMTP_KEYS = ("ca_file",)


def published_json(settings: Settings) -> str:
    """The delivery settings as JSON, keys sorted (the same settings give the same text)."""
    data = settings.model_dump(
        mode="json", include=set(PUBLISHED_KEYS), exclude={"smtp": set(_OWN_SMTP_KEYS)}
    )
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def apply_published(own: Settings, published: str) -> Settings:
    """The settings a worker runs a task with: its own, with the published keys replaced."""
    try:
        data: dict[str, Any] = json.loads(published)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object expected, not {type(data).__name__}")
        data.pop("outbox_dir", None)  # published by the first version: a path, the worker's own
        if not set(data) <= PUBLISHED_KEYS:
            raise ValueError(f"unexpected keys {sorted(set(data) - PUBLISHED_KEYS)}")
        mine = own.model_dump(mode="json")
        if isinstance(data.get("smtp"), dict):
            data["smtp"] = {**data["smtp"], **{k: mine["smtp"][k] for k in _OWN_SMTP_KEYS}}
        merged = Settings.model_validate({**mine, **data})
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
