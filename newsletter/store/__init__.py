"""Storage: the only package that talks to SQLAlchemy.

One class, :class:`Store`, with one API shape: every public method opens one short session
(one unit of work), commits or rolls back, and returns frozen dataclasses from
:mod:`newsletter.domain` or mappings of them, never ORM rows. The store works on sets: bulk
reads answer for many subscribers or slots in a constant number of statements (subscribers by
id, assigned papers of many subscribers, which slots have their issue), and bulk writes plan
many issues in one transaction. The methods are grouped by subject in mixins:

* :mod:`~newsletter.store.engine`: connection, dialects, migrations;
* :mod:`~newsletter.store.papers`: digest files and papers;
* :mod:`~newsletter.store.subscribers`: subscribers, tokens and the web's account flows;
* :mod:`~newsletter.store.issues`: issues, the delivery state machine, the sent log;
* :mod:`~newsletter.store.queue`: delivery by workers (queued issues, published settings);
* :mod:`~newsletter.store.feedback`: readers' judgments of papers, and muted terms;
* :mod:`~newsletter.store.embeddings`: papers' sentence embeddings (optional semantic matching);
* :mod:`~newsletter.store.state`: the daemon's identity, heartbeat and last scan, and the
  delivery counters (``status``, ``/metrics``);
* :mod:`~newsletter.store.bounces`: bounces, complaints and suppressed subscribers;
* :mod:`~newsletter.store.sources`: the fetched sources' health and validators, the stale alert.
"""

from __future__ import annotations

from newsletter.store.bounces import (
    BounceEvent,
    BounceKind,
    BounceOutcome,
    BounceQueries,
    MatchedBy,
    Suppression,
)
from newsletter.store.embeddings import EmbeddingQueries, StoredVector
from newsletter.store.engine import new_token, normalize_url
from newsletter.store.feedback import FeedbackEntry, FeedbackQueries
from newsletter.store.issues import (
    PENDING_STATES,
    IssueOutcome,
    IssuePlan,
    IssueQueries,
    PruneResult,
    SentIssue,
)
from newsletter.store.papers import DigestKnown, KeyedPaper, MergeCounts, PaperQueries
from newsletter.store.queue import PublishedSettings, QueueCounts, QueueQueries, ToEnqueue
from newsletter.store.sources import SourceHealth, SourceQueries
from newsletter.store.state import DaemonState, MetricsSnapshot, StateQueries
from newsletter.store.subscribers import ConfirmationRequest, SubscriberQueries

__all__ = [
    "PENDING_STATES",
    "BounceEvent",
    "BounceKind",
    "BounceOutcome",
    "ConfirmationRequest",
    "DaemonState",
    "DigestKnown",
    "FeedbackEntry",
    "IssueOutcome",
    "IssuePlan",
    "KeyedPaper",
    "MatchedBy",
    "MergeCounts",
    "MetricsSnapshot",
    "PruneResult",
    "PublishedSettings",
    "QueueCounts",
    "SentIssue",
    "SourceHealth",
    "StoredVector",
    "Store",
    "Suppression",
    "ToEnqueue",
    "new_token",
    "normalize_url",
]


class Store(
    PaperQueries,
    SubscriberQueries,
    IssueQueries,
    QueueQueries,
    FeedbackQueries,
    EmbeddingQueries,
    StateQueries,
    BounceQueries,
    SourceQueries,
):
    """The database: ``Store(url)``, then :meth:`migrate` (the first run creates the schema)."""
