"""``[backends.<id>]`` options of a ``type = "mongodb"`` backend."""

from __future__ import annotations

import attrs

from ogelkit import Duration, Size, option


def _check_format(_inst: object, _attr: object, value: str) -> None:
    if "{tenant}" not in value or "{db}" not in value:
        raise ValueError('database_format must contain both "{tenant}" and "{db}"')


@attrs.define(kw_only=True)
class MongoOptions:
    url: str = option(doc="Upstream MongoDB or FerretDB URL naming one server (standalone "
                          "mongod, mongos or FerretDB), e.g. mongodb://user:pw@10.0.0.5:27017/"
                          "?authSource=admin. Credentials, if any, are used with SCRAM-SHA-256; "
                          "tls=true and tlsCAFile are honoured.")
    pool_size: int = option(32, doc="Upstream connections of this backend, shared by every "
                                    "tenant database on it (commands are multiplexed: a client "
                                    "holds an upstream connection only while its command runs).")
    connect_timeout: Duration = option(5.0, doc="Deadline for opening an upstream connection "
                                                "(TCP, handshake and authentication).")
    max_message_size: Size = option(48 * 1024 * 1024, doc="Largest wire message accepted from a client "
                                                    "(MongoDB's maxMessageSizeBytes); a bigger "
                                                    "one closes that client. The hello reply "
                                                    "advertises the smaller of this and the "
                                                    "upstream's limit, and no message over "
                                                    "MongoDB's 48,000,000 bytes is accepted.")
    handshake_timeout: Duration = option(30.0, doc="An unauthenticated client connection that "
                                                   "sends no complete command for this long "
                                                   "is closed. Drivers' monitoring connections "
                                                   "never authenticate and send hello every "
                                                   "heartbeat (10 s by default): keep this "
                                                   "above heartbeatFrequencyMS.")
    database_format: str = option("t_{tenant}__{db}", validator=_check_format,
                                  doc="Upstream database name of a tenant database, with "
                                      "placeholders {tenant} and {db}. Names over 63 bytes "
                                      "fall back to t_<hash>.")
    cursor_timeout: Duration = option(600.0, doc="A cursor not used for this long is forgotten "
                                                 "by the gateway (MongoDB's own idle cursor "
                                                 "timeout is 10 minutes).")
    cost_per_document: float = option(0.02, doc="Cost units per document a command is "
                                                "estimated to examine, so estimates compare "
                                                "with the tier cost ceiling (Postgres planner "
                                                "units: a sequential scan costs about 0.01 per "
                                                "row plus 1 per page).")
    stats_ttl: Duration = option(30.0, doc="How long collection document counts used by cost "
                                           "estimates are cached.")
