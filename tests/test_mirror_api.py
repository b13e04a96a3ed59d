"""The mirror API without a registry: what a `registry` destination shows in the predecessor's
fields, the query validation, and the admin routes' authorization (the answers after a real mirror
are in tests/test_destinations_registry.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cccatalog.config import load_config
from cccatalog.redact import Redactor
from cccatalog.server.api import handle
from cccatalog.server.service import Service, build_service
from tests.apifixtures import ADMIN_TOKEN, bearer

CONFIG = """\
git: {enabled: false, data_dir: mirrors}
sources: [{name: s, type: static, codecollections: [{slug: alpha, static_path: alpha.json}]}]
destinations:
  - name: site
    type: registry
    registry: registry.example.com:5000/cc/images
    mirror: {codecollections: [alpha], include_branches: []}
"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    built = build_service(
        load_config(path, environ={}), environ={"CCCATALOG_ADMIN_TOKEN": ADMIN_TOKEN}, redactor=Redactor()
    )
    try:
        yield built
    finally:
        built.close()


def call(
    service: Service, method: str, path: str, query: str = "", token: str | None = None
) -> tuple[int, Any]:
    answer = handle(service.api, method, path, query, bearer(token)["Authorization"] if token else None)
    assert answer is not None
    return answer.status, answer.body


def test_a_registry_destination_shows_its_url_and_prefix_in_the_predecessors_fields(service: Service) -> None:
    status, [summary] = call(service, "GET", "/api/v1/mirror/destinations")
    assert status == 200
    assert summary == {
        "name": "site",
        "type": "registry",
        "enabled": True,
        "base_url": "https://registry.example.com:5000",
        "repo_key": None,
        "path_prefix": "cc/images",
        "enable_xray_scan": False,
        "last_synced": None,
        "last_sync_error": None,
        "tracked_codecollections": ["alpha"],
        "mirrored_tag_count": 0,
    }


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ("limit=0", 422, "query parameter limit: expected an integer from 1 to 1000, got '0'"),
        ("limit=1001", 422, "query parameter limit: expected an integer from 1 to 1000, got '1001'"),
        ("offset=-1", 422, "query parameter offset: expected an integer from 0 to 2147483648, got '-1'"),
        (
            "status=stuck",
            422,
            "query parameter status: expected one of pending, running, done, failed, got 'stuck'",
        ),
        ("destination=acme", 404, "unknown destination: acme"),
        ("cc_slug=beta", 404, "unknown codecollection: beta"),
    ],
)
def test_job_queries_are_validated_as_the_predecessors(
    service: Service, query: str, status: int, detail: str
) -> None:
    assert call(service, "GET", "/api/v1/mirror/jobs", query) == (status, {"detail": detail})


def test_no_jobs_yet_and_an_unknown_job(service: Service) -> None:
    assert call(service, "GET", "/api/v1/mirror/jobs") == (200, {"total": 0, "items": []})
    assert call(service, "GET", "/api/v1/mirror/jobs/7") == (404, {"detail": "unknown mirror job: 7"})
    assert call(service, "GET", "/api/v1/mirror/jobs/seven")[0] == 422


def test_admin_routes_want_the_admin_token_and_reading_routes_refuse_writes(service: Service) -> None:
    for path in (
        "/api/v1/mirror/drain",
        "/api/v1/mirror/destinations/site/sync",
        "/api/v1/mirror/destinations/site/codecollections/alpha/sync",
    ):
        assert call(service, "POST", path)[0] == 401
        assert call(service, "POST", path, token="wrong-token-0123456789")[0] == 403
        assert call(service, "GET", path, token=ADMIN_TOKEN)[0] == 405
    assert call(service, "POST", "/api/v1/mirror/destinations", token=ADMIN_TOKEN)[0] == 405
    status, body = call(service, "POST", "/api/v1/mirror/destinations/site/sync", token=ADMIN_TOKEN)
    assert (status, body["jobs_enqueued"], body["codecollection_slug"]) == (202, 0, None)  # no image rows yet
    assert call(service, "POST", "/api/v1/mirror/drain", token=ADMIN_TOKEN) == (
        200,
        {"jobs_run": 0, "jobs_succeeded": 0, "jobs_failed": 0},
    )
