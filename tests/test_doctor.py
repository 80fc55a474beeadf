"""`newsletter doctor` (issue 17): the DNS records to publish and the local checks of the mail
set-up, exactly as printed and as JSON, for a deployment set up for bulk mail and for the
repository's development settings; its exit status; keys refused before it runs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter.cli import cli
from newsletter.config import Settings, load_settings
from newsletter.doctor import CheckName, CheckStatus, aligned, diagnose
from tests.conftest import ROOT
from tests.factories import run_cli, settings_env, workspace_env
from tests.test_dkim import KEY_512, pem

CONFIG = ROOT / "config" / "newsletter.toml"


@pytest.fixture
def settings(workdir: Path) -> Settings:
    """Doctor opens no database: SQLite only, never also PostgreSQL."""
    env = workspace_env(workdir, f"sqlite:///{workdir / 'newsletter.db'}")
    return load_settings(CONFIG, environ=env)


@pytest.fixture(scope="module")
def key_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def production_env(settings: Settings, key_file: Path, **extra: object) -> dict[str, str]:
    values: dict[str, object] = {
        "base_url": "https://papers.example.org",
        "mailer": "smtp",
        "smtp_host": "smtp.example.org",
        "mail_bounce_address": "bounces+{token}@papers.example.org",
        "mail_dkim_selector": "mail2026",
        "mail_dkim_domain": "papers.example.org",
        "mail_dkim_key_file": key_file,
        **extra,
    }
    return settings_env(settings, **values)


def doctor(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["doctor", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


SPF_NOTE = (
    "for the envelope sender's domain (papers.example.org): list every server that sends its "
    "mail; a provider's relay documents its own include: (e.g. include:_spf.provider.example) "
    "to use instead of {mechanism}; one SPF record per name, at most 10 DNS lookups"
)
DMARC_NOTE = (
    "start with p=none and read the aggregate reports sent to the rua address (a mailbox you "
    "read); once every source passes, move to p=quarantine, then p=reject"
)
DKIM_NOTE = (
    "the public half of mail.dkim_key_file; publish it before the first signed message goes "
    "out, and keep the old selector's record for a week after a key change"
)
DMARC = "v=DMARC1; p=none; rua=mailto:dmarc-reports@papers.example.org"


def test_a_deployment_set_up_for_bulk_mail(
    settings: Settings, tmp_path: Path, key_2048: rsa.RSAPrivateKey
) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(pem(key_2048))
    env = production_env(settings, key_file)
    p = public_b64(key_2048)
    dkim_value = f"v=DKIM1; k=rsa; p={p}"
    assert len(dkim_value) > 255  # a 2048-bit key: two strings in the zone file
    zone_value = f'"{dkim_value[:255]}" "{dkim_value[255:]}"'

    status, out = doctor(env)
    assert status == 0
    assert out == (
        "DNS records to publish for papers.example.org:\n"
        f"  dkim: mail2026._domainkey.papers.example.org. IN TXT {zone_value}\n"
        f"    {DKIM_NOTE}\n"
        '  spf: papers.example.org. IN TXT "v=spf1 a:smtp.example.org -all"\n'
        f"    {SPF_NOTE.format(mechanism='a:smtp.example.org')}\n"
        f'  dmarc: _dmarc.papers.example.org. IN TXT "{DMARC}"\n'
        f"    {DMARC_NOTE}\n"
        "checks:\n"
        "  ok    dkim_key: RSA key of 2048 bits\n"
        "  ok    list_unsubscribe: List-Unsubscribe links are "
        "https://papers.example.org/unsubscribe/…\n"
        "  ok    from_alignment: From domain papers.example.org is the DKIM domain\n"
        "  ok    bounce_address: bounces return to bounces+{token}@papers.example.org\n"
        "  ok    smtp_tls: starttls to smtp.example.org:587\n"
    )

    status, out = doctor(env, "--json")
    assert status == 0
    assert json.loads(out) == {
        "domain": "papers.example.org",
        "records": [
            {
                "kind": "dkim",
                "name": "mail2026._domainkey.papers.example.org",
                "type": "TXT",
                "value": dkim_value,
                "note": DKIM_NOTE,
            },
            {
                "kind": "spf",
                "name": "papers.example.org",
                "type": "TXT",
                "value": "v=spf1 a:smtp.example.org -all",
                "note": SPF_NOTE.format(mechanism="a:smtp.example.org"),
            },
            {
                "kind": "dmarc",
                "name": "_dmarc.papers.example.org",
                "type": "TXT",
                "value": DMARC,
                "note": DMARC_NOTE,
            },
        ],
        "checks": [
            {"check": "dkim_key", "status": "ok", "reason": "RSA key of 2048 bits"},
            {
                "check": "list_unsubscribe",
                "status": "ok",
                "reason": "List-Unsubscribe links are https://papers.example.org/unsubscribe/…",
            },
            {
                "check": "from_alignment",
                "status": "ok",
                "reason": "From domain papers.example.org is the DKIM domain",
            },
            {
                "check": "bounce_address",
                "status": "ok",
                "reason": "bounces return to bounces+{token}@papers.example.org",
            },
            {
                "check": "smtp_tls",
                "status": "ok",
                "reason": "starttls to smtp.example.org:587",
            },
        ],
        "failed": False,
    }


def test_the_development_settings_fail(settings: Settings) -> None:
    """The repository's settings: no DKIM, links on loopback, the outbox. Exit status 1."""
    env = settings_env(settings)
    outbox = settings.outbox_dir
    status, out = doctor(env)
    assert status == 1
    assert out == (
        "DNS records to publish for papers.example.org:\n"
        '  spf: papers.example.org. IN TXT "v=spf1 mx -all"\n'
        f"    {SPF_NOTE.format(mechanism='mx')}\n"
        f'  dmarc: _dmarc.papers.example.org. IN TXT "{DMARC}"\n'
        f"    {DMARC_NOTE}\n"
        "checks:\n"
        "  fail  dkim_key: DKIM is not configured: messages go out unsigned, and Gmail and "
        "Yahoo refuse bulk mail without DKIM; set mail.dkim_selector, mail.dkim_domain and "
        "mail.dkim_key_file (a relay that signs with d= your From domain does it too, which "
        "this check cannot see)\n"
        "  fail  list_unsubscribe: base_url http://127.0.0.1:8080 is on loopback: readers' "
        "unsubscribe links cannot reach it; set base_url to the public https address of "
        "`newsletter serve`\n"
        "  warn  from_alignment: no DKIM domain to align with the From domain "
        "papers.example.org\n"
        "  warn  bounce_address: mail.bounce_address is not set: bounces go to the From "
        "address, where nothing matches them to subscribers; set it (e.g. "
        "bounces+{token}@papers.example.org) and read them with `newsletter bounces`\n"
        f"  warn  smtp_tls: mailer is outbox: messages are written to {outbox}, not sent; "
        "whatever sends them must use TLS\n"
    )
    status, out = doctor(env, "--json")
    assert status == 1
    data = json.loads(out)
    assert [r["kind"] for r in data["records"]] == ["spf", "dmarc"]
    assert [(c["check"], c["status"]) for c in data["checks"]] == [
        ("dkim_key", "fail"),
        ("list_unsubscribe", "fail"),
        ("from_alignment", "warn"),
        ("bounce_address", "warn"),
        ("smtp_tls", "warn"),
    ]
    assert (data["domain"], data["failed"]) == ("papers.example.org", True)


def test_a_1024_bit_key_is_a_warning(settings: Settings, tmp_path: Path) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    status, out = doctor(production_env(settings, key_file))
    assert status == 0
    assert "  warn  dkim_key: RSA key of 1024 bits: 2048 recommended (RFC 8301)\n" in out


def test_a_512_bit_key_is_refused_before_doctor_runs(settings: Settings, tmp_path: Path) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(KEY_512)
    result = run_cli(production_env(settings, key_file), "doctor")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: bad value for 'mail.dkim_key_file' in environment NEWSLETTER_MAIL_DKIM_KEY_FILE: "
        f"DKIM key file {key_file}: is an RSA key of 512 bits; DKIM needs at least 1024 "
        "(receivers ignore shorter ones), 2048 recommended\n"
    )


@pytest.mark.parametrize(
    ("extra", "check", "status", "reason"),
    [
        (
            {"mail_from_address": "digest@other.example"},
            CheckName.FROM_ALIGNMENT,
            CheckStatus.FAIL,
            "From domain other.example is not the DKIM domain papers.example.org nor a "
            "subdomain of it: DMARC fails; sign with d= the From domain or send from an "
            "address in papers.example.org",
        ),
        (
            {"mail_dkim_domain": "example.org"},
            CheckName.FROM_ALIGNMENT,
            CheckStatus.OK,
            "From domain papers.example.org and DKIM domain example.org align under DMARC's "
            "relaxed alignment (the default; not with adkim=s)",
        ),
        (
            {"base_url": "http://papers.example.org"},
            CheckName.LIST_UNSUBSCRIBE,
            CheckStatus.FAIL,
            "base_url http://papers.example.org is not https: one-click unsubscribe (RFC "
            "8058) needs an https List-Unsubscribe URL",
        ),
        (
            {"base_url": "https://[::1]:8443"},
            CheckName.LIST_UNSUBSCRIBE,
            CheckStatus.FAIL,
            "base_url https://[::1]:8443 is on loopback: readers' unsubscribe links cannot "
            "reach it; set base_url to the public https address of `newsletter serve`",
        ),
        (
            {"smtp_security": "none", "smtp_port": 25},
            CheckName.SMTP_TLS,
            CheckStatus.FAIL,
            "smtp.security is none to smtp.example.org:25: messages cross the network in "
            "clear; set smtp.security to starttls or ssl",
        ),
        (
            {"smtp_security": "none", "smtp_host": "127.0.0.1", "smtp_port": 25},
            CheckName.SMTP_TLS,
            CheckStatus.OK,
            "no TLS to 127.0.0.1:25, a relay on this machine",
        ),
        (
            {"smtp_security": "ssl", "smtp_port": 465},
            CheckName.SMTP_TLS,
            CheckStatus.OK,
            "ssl to smtp.example.org:465",
        ),
    ],
    ids=[
        "unaligned",
        "relaxed",
        "http",
        "loopback6",
        "plain-remote",
        "plain-local",
        "ssl",
    ],
)
def test_checks(
    settings: Settings,
    tmp_path: Path,
    key_2048: rsa.RSAPrivateKey,
    extra: dict[str, object],
    check: CheckName,
    status: CheckStatus,
    reason: str,
) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(pem(key_2048))
    report = diagnose(load_settings(CONFIG, environ=production_env(settings, key_file, **extra)))
    (found,) = [c for c in report.checks if c.name is check]
    assert (found.status, found.reason) == (status, reason)
    assert report.exit_status == (1 if status is CheckStatus.FAIL else 0)


def test_alignment_rule() -> None:
    assert aligned("papers.example.org", "papers.example.org")
    assert aligned("papers.example.org", "example.org")
    assert aligned("example.org", "mail.example.org")
    assert not aligned("example.org", "badexample.org")
    assert not aligned("a.example.org", "b.example.org")  # would need the public suffix list
