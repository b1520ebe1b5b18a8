"""Which jobs the Jobs table shows, and the words for a job that need no Qt.

``JobQuery`` is the filters and the order, as ``Farm.jobs`` and ``Farm.count_jobs`` take them,
and the same filter test for one job re-read after an event. Plain Python, like ``JobPages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class JobQuery:
    """What the table shows: the filters and the order, as ``Farm.jobs`` takes them."""

    status: str | None = None
    text: str = ""
    since: datetime | None = None
    order_by: str = "created_at"
    descending: bool = True

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for ``Farm.count_jobs`` (and, with ``ordering()``, ``Farm.jobs``)."""
        return {"status": self.status, "text": self.text or None, "since": self.since}

    def ordering(self) -> dict[str, Any]:
        return {"order_by": self.order_by, "descending": self.descending}

    def matches(self, job: dict) -> bool:
        """The same test as the database's filters, for one job re-read after an event."""
        if self.status is not None and job["status"] != self.status:
            return False
        if self.text:
            needle = self.text.lower()
            name = ((job.get("video") or {}).get("name") or "").lower()
            if needle not in name and needle not in job["id"].lower():
                return False
        if self.since is not None:
            created = parse_time(job.get("created_at"))
            if created is None or created < self.since:
                return False
        return True


def short_id(job_id: str) -> str:
    return job_id[:8]


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
