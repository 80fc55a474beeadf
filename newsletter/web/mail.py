"""The double opt-in email: built with the ``email`` package from a text template.

Only the site settings and the validated subscriber (whose name make_spec stripped of control
characters) reach the headers; the confirmation link is built from ``base_url``, never from
the request, so a forged Host header cannot point the link elsewhere.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from newsletter.deliver import Envelope
from newsletter.domain import SiteInfo, SubscriberSpec
from newsletter.render_html import strip_controls
from newsletter.web.context import WebContext

CONFIRM_PATH = "/confirm/"


def confirm_url(site: SiteInfo, token: str) -> str:
    return f"{site.base_url}{CONFIRM_PATH}{token}"


def confirmation_message(
    ctx: WebContext, subscriber_id: int, spec: SubscriberSpec, token: str, now: datetime
) -> tuple[Envelope, bytes]:
    """The confirmation email for a subscribe request (a :data:`ComposeConfirmation`)."""
    site = ctx.site
    email, name = spec.email, spec.name
    text = ctx.templates.get_template("confirm_email.txt.j2").render(
        site_name=site.name,
        name=name,
        email=email,
        confirm_url=confirm_url(site, token),
        base_url=site.base_url,
    )
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(strip_controls(site.from_name), addr_spec=site.from_address)
    msg["To"] = Address(name, addr_spec=email)
    msg["Subject"] = f"Confirm your subscription to {strip_controls(site.name)}"
    msg["Date"] = format_datetime(now)
    message_id = make_msgid(idstring="confirm", domain=site.domain)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    envelope = Envelope(
        sender=site.from_address,
        recipient=email,
        message_id=message_id,
        name_hint=f"confirm_{subscriber_id}_{now:%Y%m%dT%H%M%S}",
    )
    return envelope, msg.as_bytes()
