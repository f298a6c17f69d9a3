"""Options of the timeout layer (``[[layers]] type = "timeout"``)."""

from __future__ import annotations

import attrs

from ogelkit import Duration, option


@attrs.define(kw_only=True)
class TimeoutOptions:
    grace: Duration = option(
        0.0,
        doc="Extra time over the tier's statement_timeout before the gateway cancels. 0: the "
            "gateway's deadline is the tier's own. A small grace (e.g. 500ms) lets the "
            "upstream's own statement_timeout (set by the session layer) fire first, keeping "
            "the gateway deadline as the backstop for upstreams that ignore it.")
