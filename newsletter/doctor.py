"""``newsletter doctor``: the DNS records a deployment should publish, and what can be checked
about its mail set-up without leaving the machine.

Receivers such as Gmail and Yahoo want bulk mail authenticated (DKIM and SPF, aligned with the
From domain under DMARC) and one-click unsubscribe (RFC 8058: an https ``List-Unsubscribe``
covered by the DKIM signature). :func:`diagnose` reads the settings (and the DKIM key) and
returns a :class:`DoctorReport`:

* ``records``: the DKIM record built from the key (``<selector>._domainkey.<domain>``), a sample
  SPF record for the envelope sender's domain and a DMARC record for the From domain, each
  with a note on what to adapt;
* ``checks``: each :class:`CheckName` with :class:`CheckStatus` ``ok``, ``warn`` or ``fail``
  and the reason. A ``fail`` means receivers will reject or junk the mail, or readers cannot
  unsubscribe; a ``warn`` is worth a look.

Nothing here queries DNS or connects anywhere: what the records published now say, and
whether a relay signs on its own, the operator checks with the provider's tools.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from newsletter.dkim import (
    MIN_RSA_BITS,
    RECOMMENDED_RSA_BITS,
    DkimKey,
    DkimKeyError,
    KeyType,
    load_key,
)

if TYPE_CHECKING:
    from newsletter.config import Settings

#: The longest character-string in a TXT record (RFC 1035 §3.3): longer values are published
#: as several strings, which receivers join.
TXT_CHUNK = 255


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class CheckName(StrEnum):
    DKIM_KEY = "dkim_key"
    LIST_UNSUBSCRIBE = "list_unsubscribe"
    FROM_ALIGNMENT = "from_alignment"
    BOUNCE_ADDRESS = "bounce_address"
    SMTP_TLS = "smtp_tls"


class RecordKind(StrEnum):
    DKIM = "dkim"
    SPF = "spf"
    DMARC = "dmarc"


@dataclass(frozen=True)
class DnsRecord:
    kind: RecordKind
    name: str  # fully qualified, without the trailing dot
    type: str  # "TXT"
    value: str  # the whole text; see zone_line for how to write a long one
    note: str

    def zone_line(self) -> str:
        """The record as a zone-file line: the value in quoted strings of at most 255
        characters each (a 2048-bit DKIM key needs two)."""
        chunks = [self.value[i : i + TXT_CHUNK] for i in range(0, len(self.value), TXT_CHUNK)]
        quoted = " ".join(f'"{chunk}"' for chunk in chunks)
        return f"{self.name}. IN {self.type} {quoted}"


@dataclass(frozen=True)
class Check:
    name: CheckName
    status: CheckStatus
    reason: str


@dataclass(frozen=True)
class DoctorReport:
    domain: str  # the DKIM domain, else the From address's domain
    records: tuple[DnsRecord, ...]
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)

    @property
    def exit_status(self) -> int:
        """0 when no check failed (warnings included), 1 when any did."""
        return 1 if self.failed else 0

    def as_json(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "records": [
                {
                    "kind": r.kind.value,
                    "name": r.name,
                    "type": r.type,
                    "value": r.value,
                    "note": r.note,
                }
                for r in self.records
            ],
            "checks": [
                {"check": c.name.value, "status": c.status.value, "reason": c.reason}
                for c in self.checks
            ],
            "failed": self.failed,
        }


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def aligned(from_domain: str, dkim_domain: str) -> bool:
    """DMARC's relaxed alignment, approximated without the public suffix list: the same
    domain, or one a subdomain of the other."""
    a, b = from_domain.lower(), dkim_domain.lower()
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def diagnose(settings: Settings) -> DoctorReport:
    """The records to publish and the local checks for ``settings`` (reads the DKIM key)."""
    mail = settings.mail
    from_domain = domain_of(mail.from_address)
    bounce = str(getattr(mail, "bounce_address", "") or "")
    sender_domain = domain_of(bounce) if bounce else from_domain
    key: DkimKey | None = None
    key_problem = ""
    if mail.dkim_key_file is not None:
        try:
            key = load_key(mail.dkim_key_file)
        except DkimKeyError as exc:
            key_problem = str(exc)
    configured = mail.dkim_selector is not None and mail.dkim_domain is not None
    domain = mail.dkim_domain if configured and mail.dkim_domain else from_domain

    records: list[DnsRecord] = []
    if configured and key is not None:
        records.append(
            DnsRecord(
                RecordKind.DKIM,
                f"{mail.dkim_selector}._domainkey.{mail.dkim_domain}",
                "TXT",
                key.txt_record(),
                "the public half of mail.dkim_key_file; publish it before the first signed "
                "message goes out, and keep the old selector's record for a week after a "
                "key change",
            )
        )
    records.append(DnsRecord(RecordKind.SPF, sender_domain, "TXT", *_spf(settings, sender_domain)))
    records.append(
        DnsRecord(
            RecordKind.DMARC,
            f"_dmarc.{from_domain}",
            "TXT",
            f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{from_domain}",
            "start with p=none and read the aggregate reports sent to the rua address "
            "(a mailbox you read); once every source passes, move to p=quarantine, then "
            "p=reject",
        )
    )
    checks = (
        _key_check(configured, key, key_problem),
        _unsubscribe_check(settings.base_url),
        _alignment_check(from_domain, mail.dkim_domain if configured else None),
        _bounce_check(bounce, from_domain),
        _tls_check(settings),
    )
    return DoctorReport(domain=domain, records=tuple(records), checks=checks)


def _spf(settings: Settings, sender_domain: str) -> tuple[str, str]:
    """A sample SPF value for the envelope sender's domain, and what to adapt."""
    host = settings.smtp.host if settings.mailer == "smtp" else ""
    mechanism = "mx"
    if host and not is_loopback(host):
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
            mechanism = f"ip{ip.version}:{ip}"
        except ValueError:
            mechanism = f"a:{host}"
    note = (
        f"for the envelope sender's domain ({sender_domain}): list every server that sends "
        "its mail; a provider's relay documents its own include: (e.g. "
        f"include:_spf.provider.example) to use instead of {mechanism}; one SPF record per "
        "name, at most 10 DNS lookups"
    )
    return f"v=spf1 {mechanism} -all", note


def _key_check(configured: bool, key: DkimKey | None, problem: str) -> Check:
    name = CheckName.DKIM_KEY
    if problem:
        return Check(name, CheckStatus.FAIL, problem)
    if not configured or key is None:
        return Check(
            name,
            CheckStatus.FAIL,
            "DKIM is not configured: messages go out unsigned, and Gmail and Yahoo refuse "
            "bulk mail without DKIM; set mail.dkim_selector, mail.dkim_domain and "
            "mail.dkim_key_file (a relay that signs with d= your From domain does it too, "
            "which this check cannot see)",
        )
    if key.type is KeyType.ED25519:
        return Check(
            name,
            CheckStatus.WARN,
            "Ed25519 key: many receivers (Gmail among them) do not verify ed25519-sha256 "
            "signatures; sign with an RSA key of 2048 bits",
        )
    if key.bits < MIN_RSA_BITS:
        return Check(name, CheckStatus.FAIL, f"RSA key of {key.bits} bits: at least {MIN_RSA_BITS}")
    if key.bits < RECOMMENDED_RSA_BITS:
        return Check(
            name,
            CheckStatus.WARN,
            f"RSA key of {key.bits} bits: {RECOMMENDED_RSA_BITS} recommended (RFC 8301)",
        )
    return Check(name, CheckStatus.OK, f"RSA key of {key.bits} bits")


def _unsubscribe_check(base_url: str) -> Check:
    name = CheckName.LIST_UNSUBSCRIBE
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if is_loopback(host):
        return Check(
            name,
            CheckStatus.FAIL,
            f"base_url {base_url} is on loopback: readers' unsubscribe links cannot reach "
            "it; set base_url to the public https address of `newsletter serve`",
        )
    if parts.scheme != "https":
        return Check(
            name,
            CheckStatus.FAIL,
            f"base_url {base_url} is not https: one-click unsubscribe (RFC 8058) needs an "
            "https List-Unsubscribe URL",
        )
    return Check(name, CheckStatus.OK, f"List-Unsubscribe links are {base_url}/unsubscribe/…")


def _alignment_check(from_domain: str, dkim_domain: str | None) -> Check:
    name = CheckName.FROM_ALIGNMENT
    if dkim_domain is None:
        return Check(
            name,
            CheckStatus.WARN,
            f"no DKIM domain to align with the From domain {from_domain}",
        )
    if from_domain == dkim_domain:
        return Check(name, CheckStatus.OK, f"From domain {from_domain} is the DKIM domain")
    if aligned(from_domain, dkim_domain):
        return Check(
            name,
            CheckStatus.OK,
            f"From domain {from_domain} and DKIM domain {dkim_domain} align under DMARC's "
            "relaxed alignment (the default; not with adkim=s)",
        )
    return Check(
        name,
        CheckStatus.FAIL,
        f"From domain {from_domain} is not the DKIM domain {dkim_domain} nor a subdomain of "
        "it: DMARC fails; sign with d= the From domain or send from an address in "
        f"{dkim_domain}",
    )


def _bounce_check(bounce: str, from_domain: str) -> Check:
    name = CheckName.BOUNCE_ADDRESS
    if not bounce:
        return Check(
            name,
            CheckStatus.WARN,
            "mail.bounce_address is not set: bounces go to the From address, where nothing "
            "matches them to subscribers; set it (e.g. bounces+{token}@"
            f"{from_domain}) and read them with `newsletter bounces`",
        )
    return Check(name, CheckStatus.OK, f"bounces return to {bounce}")


def _tls_check(settings: Settings) -> Check:
    name = CheckName.SMTP_TLS
    if settings.mailer != "smtp":
        return Check(
            name,
            CheckStatus.WARN,
            f"mailer is {settings.mailer}: messages are written to {settings.outbox_dir}, "
            "not sent; whatever sends them must use TLS",
        )
    smtp = settings.smtp
    if smtp.security != "none":
        return Check(name, CheckStatus.OK, f"{smtp.security} to {smtp.host}:{smtp.port}")
    if is_loopback(smtp.host):
        return Check(
            name,
            CheckStatus.OK,
            f"no TLS to {smtp.host}:{smtp.port}, a relay on this machine",
        )
    return Check(
        name,
        CheckStatus.FAIL,
        f"smtp.security is none to {smtp.host}:{smtp.port}: messages"
        + (" and the SMTP password" if smtp.username else "")
        + " cross the network in clear; set smtp.security to starttls or ssl",
    )


__all__ = [
    "Check",
    "CheckName",
    "CheckStatus",
    "DnsRecord",
    "DoctorReport",
    "RecordKind",
    "aligned",
    "diagnose",
]
