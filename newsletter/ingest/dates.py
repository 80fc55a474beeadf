"""Dates as digest pages print them: ``Mar 12``, ``Oct 4, 2023``.

A date without a year gets the latest year that puts it no later than the reference date
(the digest's own date, or the ingest date when the page has none): a page dated Jan 3 that
lists a paper from ``Dec 30`` means December of the year before.
"""

from __future__ import annotations

import re
from datetime import date

MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
        start=1,
    )
}
DATE_LINE = re.compile(
    r"^(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+(?P<day>\d{1,2})"
    r"(?:,\s*(?P<year>\d{4}))?(?:\s+(?P<upvotes>\d{1,9}))?$"
)


def resolve(month: int, day: int, year: int | None, reference: date) -> date | None:
    """Build the date; None when it does not exist (e.g. Feb 30)."""
    if year is not None:
        try:
            return date(year, month, day)
        except ValueError:
            return None
    for years_back in range(5):  # 5, not 1: Feb 29 may need to go back to a leap year
        try:
            candidate = date(reference.year - years_back, month, day)
        except ValueError:
            continue
        if candidate <= reference:
            return candidate
    return None
