"""Fetching papers ourselves (README "Fetching papers"): ``[[source]]`` kinds and their URLs
(:mod:`~newsletter.fetch.sources`), the polite HTTP client (:mod:`~newsletter.fetch.http`),
and a fetch into the inbox with the sources' health and the stale rule
(:mod:`~newsletter.fetch.run`)."""
