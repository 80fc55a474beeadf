"""Stored sentence embeddings of papers, for the optional semantic matching (part of
:class:`Store`).

The store keeps bytes: float32 values as :mod:`newsletter.semantic` wrote them, with the model
that computed them and their number of dimensions; it needs no numpy. Reads and writes are in
bulk: the papers still to embed, newest first (the candidates of the next issues; ingest and
``newsletter semantic embed`` work through them in batches), and the vectors of a planning's
candidates in one query per :data:`~newsletter.store.engine.BATCH` ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from newsletter.domain import Paper
from newsletter.store import rows
from newsletter.store.engine import BATCH, StoreBase, chunks
from newsletter.store.schema import PaperEmbeddingRow, PaperRow


@dataclass(frozen=True)
class StoredVector:
    """One paper's embedding as stored: ``dims`` float32 values in ``data``."""

    dims: int
    data: bytes


class EmbeddingQueries(StoreBase):
    """Papers' embeddings per model: what is missing, writing a batch, reading many."""

    def papers_to_embed(self, model: str, limit: int) -> list[Paper]:
        """Up to ``limit`` papers, newest (highest id) first, with no embedding by ``model``
        (none at all, or one by another model)."""
        with self._read() as s:
            done = select(PaperEmbeddingRow.paper_id).where(PaperEmbeddingRow.model == model)
            query = (
                select(PaperRow)
                .where(PaperRow.id.not_in(done))
                .order_by(PaperRow.id.desc())
                .limit(limit)
            )
            return [rows.paper(r) for r in s.scalars(query)]

    def count_to_embed(self, model: str) -> int:
        with self._read() as s:
            done = select(PaperEmbeddingRow.paper_id).where(PaperEmbeddingRow.model == model)
            query = select(func.count()).select_from(PaperRow).where(PaperRow.id.not_in(done))
            return int(s.scalar(query) or 0)

    def count_embeddings(self, model: str) -> int:
        with self._read() as s:
            query = select(func.count()).where(PaperEmbeddingRow.model == model)
            return int(s.scalar(query.select_from(PaperEmbeddingRow)) or 0)

    def save_embeddings(self, model: str, vectors: Mapping[int, StoredVector]) -> int:
        """Store (or replace) the embeddings of these papers; the count written. A paper
        deleted meanwhile is skipped (its row would break the foreign key)."""
        if not vectors:
            return 0
        with self._session() as s:
            ids = sorted(vectors)
            present: set[int] = set()
            for chunk in chunks(ids, BATCH):
                present.update(s.scalars(select(PaperRow.id).where(PaperRow.id.in_(chunk))))
                s.execute(delete(PaperEmbeddingRow).where(PaperEmbeddingRow.paper_id.in_(chunk)))
            values = [
                {"paper_id": pid, "model": model, "dims": v.dims, "vector": v.data}
                for pid, v in sorted(vectors.items())
                if pid in present
            ]
            for chunk in chunks(values, BATCH):
                s.execute(insert(PaperEmbeddingRow), list(chunk))
            return len(values)

    def embeddings(self, model: str, paper_ids: Iterable[int]) -> dict[int, StoredVector]:
        """paper id → its stored embedding by ``model``, for those of ``paper_ids`` that have
        one."""
        out: dict[int, StoredVector] = {}
        with self._read() as s:
            for chunk in chunks(sorted(set(paper_ids)), BATCH):
                query = select(
                    PaperEmbeddingRow.paper_id, PaperEmbeddingRow.dims, PaperEmbeddingRow.vector
                ).where(PaperEmbeddingRow.model == model, PaperEmbeddingRow.paper_id.in_(chunk))
                for pid, dims, data in s.execute(query):
                    out[pid] = StoredVector(dims, bytes(data))
        return out


def forget_embeddings(s: Session, paper_ids: Iterable[int]) -> None:
    """Drop the embeddings of papers whose text changed (ingest merged a richer title or
    abstract): they are embedded again from the new text."""
    for chunk in chunks(sorted(set(paper_ids)), BATCH):
        s.execute(delete(PaperEmbeddingRow).where(PaperEmbeddingRow.paper_id.in_(chunk)))
