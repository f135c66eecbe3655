"""The one timestamp every build output carries: ``SOURCE_DATE_EPOCH``.

The kernel (kbuild's timestamp), the root image (file times), image build
steps and releases all take their time from :func:`source_date_epoch`, so
the same inputs give the same bytes on any day.
"""

from __future__ import annotations

import os

from tailor.errors import TailorError

DEFAULT_EPOCH = 1672531200
"""SOURCE_DATE_EPOCH when the environment sets none (2023-01-01, around Linux 6.1's release)."""


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH from the environment, else :data:`DEFAULT_EPOCH`; a value that is not a whole
    number of seconds is a :class:`~tailor.errors.TailorError`."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if raw:
        if not raw.isdigit():
            raise TailorError(f"SOURCE_DATE_EPOCH={raw!r}: must be a whole number of seconds")
        return int(raw)
    return DEFAULT_EPOCH
