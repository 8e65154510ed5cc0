from __future__ import annotations

import pytest

from resonera.common import topics
from resonera.common.errors import ProtocolError


def test_topic_names_follow_the_design_brief() -> None:
    assert topics.up("d1", "session") == "resonera/v1/dev/d1/up/session"
    assert topics.desired("d1") == "resonera/v1/dev/d1/desired"
    assert topics.ack("d1") == "resonera/v1/dev/d1/ack"
    assert topics.status("d1") == "resonera/v1/dev/d1/status"
    assert topics.INGEST_SHARED_SUBSCRIPTION == "$share/ingest/resonera/v1/dev/+/up/#"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "x" * 65, "-lead", "sp ace"])
def test_device_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ProtocolError, match="not valid"):
        topics.up(bad, "session")


def test_parse_up() -> None:
    assert topics.parse_up("resonera/v1/dev/d-1/up/metrics") == ("d-1", "metrics")
    with pytest.raises(ProtocolError, match="unknown kind"):
        topics.parse_up("resonera/v1/dev/d-1/up/secrets")
