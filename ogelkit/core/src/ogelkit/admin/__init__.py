"""The admin API (``/admin/...``) and what plugins use to add endpoints to it.

Public API for plugins: ``Endpoint``, ``Param``, ``Call``, ``Problem``, ``paginate``,
``page_schema``, ``LIMIT``, ``CURSOR``; return a list of ``Endpoint`` from the
``ogelkit_admin_endpoints`` hook.
"""

from ogelkit.admin.api import CURSOR, LIMIT, AdminApi, Call, Endpoint, Param, page_schema, paginate
from ogelkit.admin.problems import Problem, problem_response

__all__ = ["CURSOR", "LIMIT", "AdminApi", "Call", "Endpoint", "Param", "Problem", "page_schema",
           "paginate", "problem_response"]
