"""The double opt-in email: built with the ``email`` package from a text template.

It carries nothing typed into the form but the address it goes to: no name (not even in the
To header), no profile. Anybody can submit anybody's address, so any free text from the form
would make this email a relay for the submitter's words to a stranger's inbox, under our
name. Only the site settings, the validated address and the link reach it; the link is built
from ``base_url``, never from the request, so a forged Host header cannot point it elsewhere.
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
    email = spec.email
    text = ctx.templates.get_template("confirm_email.txt.j2").render(
        site_name=site.name,
        # Always empty, never the form's name (see the module docstring); still passed so
        # that an override template written for the old email renders.
        name="",
        email=email,
        confirm_url=confirm_url(site, token),
        base_url=site.base_url,
    )
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(strip_controls(site.from_name), addr_spec=site.from_address)
    msg["To"] = Address(addr_spec=email)
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
