"""DKIM: every outgoing message signed (RFC 6376) with dkimpy, and the key behind it.

With ``mail.dkim_selector``, ``mail.dkim_domain`` and ``mail.dkim_key_file`` set (all three or
none), :func:`signing` wraps a :class:`~newsletter.deliver.Mailer` in a
:class:`SigningMailer`: each message gets a ``DKIM-Signature`` header (relaxed/relaxed,
``rsa-sha256`` or ``ed25519-sha256`` by the key's type) just before it goes to the outbox or
the SMTP server. :class:`newsletter.app.Newsletter` applies it to whatever mailer it sends
through, so issues (in-process, render workers, Celery workers) and the web's confirmation and
welcome emails are all signed in one place.

The signature covers :data:`SIGNED_HEADERS` that the message has, ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` among them (RFC 8058 §4 requires it for one-click unsubscribe), and
names those of :data:`OVERSIGNED` once more: a header of that name added on the way (a second
``List-Unsubscribe``, a second ``From``) then breaks the signature instead of riding on it.

The key is a PEM file (PKCS#1 or PKCS#8, unencrypted), RSA of at least
:data:`MIN_RSA_BITS` bits (2048 recommended) or Ed25519. It is read and checked once when the
settings are loaded and once when the mailer is made, never per message; its contents are never
logged. :func:`load_key` also derives the DNS record to publish (``newsletter doctor``).
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.errors import ConfigError, DeliveryError

if TYPE_CHECKING:
    from newsletter.config import MailSettings
    from newsletter.deliver import Envelope, Mailer

log = logging.getLogger(__name__)

#: RSA keys shorter than this are refused: receivers (and dkimpy) treat their signatures as
#: invalid (RFC 8301 §3.2).
MIN_RSA_BITS = 1024
#: What ``newsletter doctor`` calls a good RSA key size (RFC 8301 recommends at least 2048).
RECOMMENDED_RSA_BITS = 2048

#: The headers signed when the message has them, in this order.
SIGNED_HEADERS = (
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
#: Headers that appear once: named a second time in ``h=`` (over-signed), so that adding
#: another one after signing breaks the signature.
OVERSIGNED = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    }
)

_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


class KeyType(StrEnum):
    """The key types DKIM knows (the ``k=`` tag)."""

    RSA = "rsa"
    ED25519 = "ed25519"


class DkimKeyError(ConfigError):
    """The DKIM key file cannot be used: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"DKIM key file {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class DkimKey:
    """A loaded DKIM private key: its type, size, the public key for DNS, and the form dkimpy
    signs with (``repr`` leaves the private part out)."""

    type: KeyType
    bits: int
    public: str  # the base64 ``p=`` value of the DNS record
    signing_key: bytes = field(repr=False)  # PKCS#1 PEM (RSA) or the base64 seed (Ed25519)

    @property
    def algorithm(self) -> bytes:
        """The ``a=`` tag of signatures made with this key."""
        return b"rsa-sha256" if self.type is KeyType.RSA else b"ed25519-sha256"

    def txt_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>``."""
        return f"v=DKIM1; k={self.type.value}; p={self.public}"


def load_key(path: Path) -> DkimKey:
    """Read and check a PEM private key; :class:`DkimKeyError` says what is wrong with it."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DkimKeyError(
            path, "is encrypted: store it without a passphrase, readable by this user only"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError(
            path,
            "is not a PEM private key (expected -----BEGIN PRIVATE KEY----- or "
            "-----BEGIN RSA PRIVATE KEY-----; make one with "
            "`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`)",
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                path,
                f"is an RSA key of {key.key_size} bits; DKIM needs at least {MIN_RSA_BITS} "
                f"(receivers ignore shorter ones), {RECOMMENDED_RSA_BITS} recommended",
            )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return DkimKey(KeyType.RSA, key.key_size, base64.b64encode(public).decode(), pem)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return DkimKey(
            KeyType.ED25519, 256, base64.b64encode(public).decode(), base64.b64encode(seed)
        )
    raise DkimKeyError(path, "is neither an RSA nor an Ed25519 key: DKIM signs with those two")


class DkimSigner:
    """Signs messages for one selector and domain with one key (thread-safe: no state)."""

    def __init__(self, selector: str, domain: str, key: DkimKey) -> None:
        self.selector = selector
        self.domain = domain
        self.key = key
        self._selector = selector.encode("ascii")
        self._domain = domain.encode("ascii")

    @classmethod
    def from_settings(cls, mail: MailSettings) -> DkimSigner | None:
        """The signer the settings describe, or None when DKIM is not configured."""
        if mail.dkim_selector is None or mail.dkim_domain is None or mail.dkim_key_file is None:
            return None
        return cls(mail.dkim_selector, mail.dkim_domain, load_key(mail.dkim_key_file))

    def headers_to_sign(self, message: bytes) -> list[bytes]:
        """The ``h=`` list for ``message``: :data:`SIGNED_HEADERS` it has, then those of
        :data:`OVERSIGNED` again."""
        head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        present = {m.group(1).lower() for m in _HEADER_NAME.finditer(head)}
        names = [h.lower().encode("ascii") for h in SIGNED_HEADERS]
        signed = [n for n in names if n in present]
        return signed + [n for n in signed if n.decode("ascii") in OVERSIGNED]

    def sign(self, message: bytes) -> bytes:
        """``message`` with a ``DKIM-Signature`` header in front."""
        import dkim

        try:
            header: bytes = dkim.sign(
                message,
                self._selector,
                self._domain,
                self.key.signing_key,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=self.key.algorithm,
                include_headers=self.headers_to_sign(message),
            )
        except dkim.DKIMException as exc:
            raise DeliveryError(
                f"message could not be DKIM-signed: {exc}", permanent=True
            ) from None
        return header + message


class SigningMailer:
    """A :class:`~newsletter.deliver.Mailer` that DKIM-signs each message, then hands it to
    the mailer it wraps (whose ``parallel_sessions``, if any, it keeps)."""

    def __init__(self, inner: Mailer, signer: DkimSigner) -> None:
        self.inner = inner
        self.signer = signer
        sessions = getattr(inner, "parallel_sessions", None)
        if isinstance(sessions, int):
            self.parallel_sessions = sessions

    def send(self, envelope: Envelope, message: bytes) -> str:
        return self.inner.send(envelope, self.signer.sign(message))

    def close(self) -> None:
        self.inner.close()


def signing(mailer: Mailer, mail: MailSettings) -> Mailer:
    """``mailer`` itself without DKIM settings, else ``mailer`` wrapped to sign every message
    (the key is read here, once)."""
    signer = DkimSigner.from_settings(mail)
    if signer is None:
        return mailer
    log.info(
        "DKIM: signing as %s._domainkey.%s (%s, %d bits)",
        signer.selector,
        signer.domain,
        signer.key.type.value,
        signer.key.bits,
    )
    return SigningMailer(mailer, signer)


__all__ = [
    "MIN_RSA_BITS",
    "RECOMMENDED_RSA_BITS",
    "SIGNED_HEADERS",
    "DkimKey",
    "DkimKeyError",
    "DkimSigner",
    "KeyType",
    "SigningMailer",
    "load_key",
    "signing",
]
