"""Render issues in worker processes, so that rendering runs on another core than sending.

Rendering is CPU work (highlighting, joining, quoted-printable encoding: about 4 ms per
ten-paper issue); in a thread it shares the GIL with the sending loop, so a large delivery
pass spent its time rendering *or* sending. A :class:`RenderWorkers` pool renders whole
batches in ``processes`` worker processes, each with its own :class:`EmailRenderer` kept for
the pool's life, while the delivering process claims, sends and commits.

What crosses the process boundary is plain data: the issue's content in, and out the three
things delivery needs (message bytes, Message-ID, subject) or the reason rendering failed.
The workers touch no database and send nothing, so a worker that dies loses nothing: the
pool reports :class:`RenderPoolBroken` and the caller renders the rest in-process.

Workers are started with ``spawn`` (a fork of a process holding threads and database
connections is unsafe) and ignore SIGINT: the delivering process decides when to stop,
finishes the message in flight, and shuts the pool down. They end with their parent.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.domain import IssueContent, RenderedIssue, SiteInfo
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.render import EmailRenderer

log = logging.getLogger(__name__)

__all__ = ["RenderFailed", "RenderPoolBroken", "RenderWorkers", "default_render_processes"]

#: Passes with fewer due issues render in a thread: starting a worker costs about a second.
MIN_ISSUES_FOR_PROCESSES = 1000


class RenderFailed(NewsletterError):
    """Rendering one issue failed in a worker; carries the worker's reason as text (the
    original exception stays in the worker, which may not be able to pickle it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[RenderFailed], tuple[str]]:
        return (RenderFailed, (self.reason,))


class RenderPoolBroken(NewsletterError):
    """A worker process died (killed, out of memory): render the rest in-process."""


@dataclass(frozen=True)
class _Job:
    templates_dir: Path | None
    site: SiteInfo
    max_html_bytes: int
    log_level: int


_renderer: EmailRenderer | None = None


def _start_worker(job: _Job) -> None:
    """Worker initializer: one renderer for the worker's life.

    Ctrl-C is the parent's to handle (it finishes the message in flight). SIGTERM keeps its
    default: a worker ended with its service dies, and the parent renders the rest
    in-process or stops. A worker also ends when its parent is gone (SIGKILL, out of
    memory): a spawned worker would otherwise wait on its job queue forever.
    """
    global _renderer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    logging.basicConfig(
        level=job.log_level, format="%(levelname)s %(name)s[render %(process)d]: %(message)s"
    )
    from newsletter.render import EmailRenderer

    _renderer = EmailRenderer(job.templates_dir, job.site, max_html_bytes=job.max_html_bytes)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _render_chunk(contents: Sequence[IssueContent]) -> list[RenderedIssue | RenderFailed]:
    """Render in a worker; the HTML and text parts stay here (delivery needs the message)."""
    assert _renderer is not None, "worker not initialised"
    out: list[RenderedIssue | RenderFailed] = []
    for content in contents:
        try:
            rendered = _renderer.render(content)
        except Exception as exc:  # noqa: BLE001 - a failure counts for its issue only
            reason = (
                str(exc) if isinstance(exc, NewsletterError) else f"{type(exc).__name__}: {exc}"
            )
            out.append(RenderFailed(reason))
        else:
            out.append(
                RenderedIssue(
                    subject=rendered.subject,
                    html="",
                    text="",
                    message=rendered.message,
                    message_id=rendered.message_id,
                )
            )
    return out


def default_render_processes() -> int:
    """One worker per core beyond the one that sends, at most four; none on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cores or 1) - 1))


class RenderWorkers:
    """A pool of rendering processes for one delivery pass (a context manager)."""

    def __init__(self, renderer: EmailRenderer, processes: int) -> None:
        """Workers that render as ``renderer`` does (same templates, site and size limit)."""
        if processes < 1:
            raise ValueError("RenderWorkers needs at least one process")
        self.processes = processes
        job = _Job(
            renderer.templates_dir,
            renderer.site,
            renderer.max_html_bytes,
            logging.getLogger().getEffectiveLevel(),
        )
        self._pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(job,),
        )
        # Start the workers now (import, inline the templates: about a second each); until
        # they are up the caller renders in-process (see :attr:`ready`).
        self._started = [self._pool.submit(os.getpid) for _ in range(processes)]
        log.info("rendering in %d worker process(es)", processes)

    @property
    def ready(self) -> bool:
        """True once every worker has started (or one failed to: :meth:`render` says so)."""
        return all(future.done() for future in self._started)

    def render(self, contents: Sequence[IssueContent]) -> list[RenderedIssue | RenderFailed]:
        """Render ``contents`` across the workers, in order; blocks until all are done."""
        if not contents:
            return []
        size = -(-len(contents) // self.processes)
        chunks = [list(contents[i : i + size]) for i in range(0, len(contents), size)]
        try:
            futures = [self._pool.submit(_render_chunk, chunk) for chunk in chunks]
            return [result for future in futures for result in future.result()]
        except BrokenProcessPool as exc:
            raise RenderPoolBroken(f"a rendering worker process died ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - e.g. a value that cannot be pickled
            raise RenderPoolBroken(
                f"the rendering workers failed ({type(exc).__name__}: {exc})"
            ) from None

    def close(self) -> None:
        """Stop the workers; queued work is dropped (its issues stay pending)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RenderWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
