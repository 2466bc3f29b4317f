"""The replay window every connector's webhook check uses (``connectors.signing``)."""

from __future__ import annotations

import pytest

from connectors.errors import WebhookVerificationError
from connectors.signing import check_timestamp

NOW = 1_796_547_600.0  # 2026-12-06T09:00:00Z


@pytest.mark.parametrize("stamp", [NOW, int(NOW), str(int(NOW)), int(NOW * 1000), f" {int(NOW * 1000)} ",
                                   "2026-12-06T09:00:00Z", "2026-12-06T10:00:00+01:00", "2026-12-06T09:00:00"])
def test_epoch_seconds_milliseconds_and_iso_times_are_read(stamp):
    assert check_timestamp(stamp, now=NOW) == NOW


@pytest.mark.parametrize("stamp", ["²", "١٧٩٦٥٤٧٦٠٠", 10**400, float("nan"), float("inf"), True, "1e9", "yesterday", [NOW]])
def test_a_timestamp_no_vendor_sends_is_refused_as_unreadable_not_a_crash(stamp):
    """Found by the fuzz test: "²".isdigit() is true and float("²") raises ValueError (a 500)."""
    with pytest.raises(WebhookVerificationError, match="unreadable timestamp"):
        check_timestamp(stamp, now=NOW)


def test_a_timestamp_outside_the_window_is_refused():
    with pytest.raises(WebhookVerificationError, match="replay window"):
        check_timestamp(NOW - 301, now=NOW)
    assert check_timestamp(NOW - 299, now=NOW) == NOW - 299
