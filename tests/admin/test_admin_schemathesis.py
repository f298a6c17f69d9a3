"""Schemathesis (property-based, from the served OpenAPI document) against every admin
endpoint of a running gateway, as the operator: no 5xx, every answer matches the documented
status codes, content types and schemas, and requests that violate the schema are refused
with a 4xx problem.

Schemathesis's pytest plugin does not run under pytest 9 here, so each operation's
strategy is driven by Hypothesis directly (the same checks: ``call_and_validate``)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from .conftest import ADMIN

#: Examples per operation: enough to reach every branch of the validation, bounded for CI.
EXAMPLES = 30


def test_every_endpoint_keeps_its_contract(gw):
    schema = schemathesis.openapi.from_url(gw.url("/admin/openapi.json"))
    schema.config.base_url = gw.url()
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/admin/reload":
            continue  # it rereads the config file: covered by tests/test_reload.py

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                # ignored_auth would resend the request without "authorization" but cannot
                # tell a header given here from one it manages; test_admin_api tests 401s.
                case.call_and_validate(headers=ADMIN, timeout=30,
                                       excluded_checks=[schemathesis.checks.ignored_auth])

            tried += 1
            try:
                check()
            except (Exception, BaseExceptionGroup) as exc:  # all failures, reported together
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}):"
                                f" {exc}")
    assert tried >= 50
    assert not failures, "\n\n".join(failures)
