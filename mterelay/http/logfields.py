"""The log event field the access log and the relay's log observers agree on.

A line that is already formatted (the access log's) travels in this field with
``log_format`` ``"{mterelay_text}"``, so the observers write it without running
Twisted's formatter again; both sides must spell it the same.
"""

from __future__ import annotations

__all__ = ["TEXT"]

TEXT = "mterelay_text"
