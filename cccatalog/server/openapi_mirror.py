"""The mirror API's part of the OpenAPI document (`openapi.document` merges it): the predecessor's
`DestinationSummary`, `MirrorJobView`, `MirrorJobsResponse` and `MirrorTriggerResponse`."""

from __future__ import annotations

from typing import Any

_S = {"type": "string", "nullable": True}
_T = {"type": "string", "format": "date-time", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_ERROR = _json(_ref("Error"), "Error")
_ADMIN_ERRORS = {
    "401": _json(_ref("Error"), "No bearer token"),
    "403": _json(_ref("Error"), "Wrong bearer token"),
    "503": _json(_ref("Error"), "No admin token configured"),
}
_JOB_FIELDS: dict[str, Any] = {
    "id": {"type": "integer"},
    "cc_slug": {"type": "string"},
    "destination": {"type": "string"},
    "source_image_ref": {"type": "string"},
    "target_image_ref": {"type": "string"},
    "status": {"type": "string", "enum": ["pending", "running", "done", "failed"]},
    "attempts": {"type": "integer"},
    "max_attempts": {"type": "integer"},
    "last_error": _S,
    "created_at": {"type": "string", "format": "date-time"},
    "started_at": _T,
    "finished_at": _T,
}

SCHEMAS: dict[str, Any] = {
    "DestinationSummary": {
        "type": "object",
        "required": [
            "name",
            "type",
            "enabled",
            "enable_xray_scan",
            "tracked_codecollections",
            "mirrored_tag_count",
        ],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["jfrog", "registry"]},
            "enabled": {"type": "boolean"},
            "base_url": _S,
            "repo_key": _S,
            "path_prefix": _S,
            "enable_xray_scan": {"type": "boolean"},
            "last_synced": _T,
            "last_sync_error": _S,
            "tracked_codecollections": {"type": "array", "items": {"type": "string"}},
            "mirrored_tag_count": {"type": "integer"},
        },
    },
    "MirrorJobView": {"type": "object", "required": list(_JOB_FIELDS), "properties": _JOB_FIELDS},
    "MirrorJobDetail": {
        "type": "object",
        "required": list(_JOB_FIELDS),
        "properties": {**_JOB_FIELDS, "log_text": _S},
    },
    "MirrorJobsResponse": {
        "type": "object",
        "required": ["total", "items"],
        "properties": {
            "total": {"type": "integer"},
            "items": {"type": "array", "items": _ref("MirrorJobView")},
        },
    },
    "MirrorTriggerResponse": {
        "type": "object",
        "required": ["destination", "jobs_enqueued", "refs_already_mirrored", "detail"],
        "properties": {
            "destination": {"type": "string"},
            "codecollection_slug": _S,
            "jobs_enqueued": {"type": "integer"},
            "refs_already_mirrored": {"type": "integer"},
            "detail": {"type": "string"},
        },
    },
    "MirrorDrained": {
        "type": "object",
        "required": ["jobs_run", "jobs_succeeded", "jobs_failed"],
        "properties": {k: {"type": "integer"} for k in ("jobs_run", "jobs_succeeded", "jobs_failed")},
    },
}

_NAME = _path("name", {"type": "string"})


def _trigger(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": parameters,
            "responses": {
                "202": _json(_ref("MirrorTriggerResponse"), "Jobs enqueued"),
                "404": _json(_ref("Error"), "Unknown destination"),
                **_ADMIN_ERRORS,
            },
        }
    }


PATHS: dict[str, Any] = {
    "/api/v1/mirror/destinations": {
        "get": {
            "summary": "The configured destinations and what they hold",
            "responses": {"200": _json({"type": "array", "items": _ref("DestinationSummary")})},
        }
    },
    "/api/v1/mirror/jobs": {
        "get": {
            "summary": "Mirror jobs, newest first",
            "parameters": [
                _query(
                    "status",
                    {"type": "string", "enum": ["pending", "running", "done", "failed"]},
                    "Only these.",
                ),
                _query("destination", {"type": "string"}, "Only this destination's."),
                _query("cc_slug", {"type": "string"}, "Only this CodeCollection's."),
                _query(
                    "limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size."
                ),
                _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Jobs skipped."),
            ],
            "responses": {"200": _json(_ref("MirrorJobsResponse")), "404": _ERROR, "422": _ERROR},
        }
    },
    "/api/v1/mirror/jobs/{id}": {
        "get": {
            "summary": "One mirror job, with the log of its last attempt",
            "parameters": [_path("id", {"type": "integer"})],
            "responses": {"200": _json(_ref("MirrorJobDetail")), "404": _ERROR, "422": _ERROR},
        }
    },
    "/api/v1/mirror/destinations/{name}/sync": _trigger(
        "Enqueue jobs for every build this destination lacks", [_NAME]
    ),
    "/api/v1/mirror/destinations/{name}/codecollections/{slug}/sync": _trigger(
        "Enqueue jobs for the builds of one CodeCollection this destination lacks",
        [_NAME, _path("slug", {"type": "string"})],
    ),
    "/api/v1/mirror/drain": {
        "post": {
            "summary": "Run the pending mirror jobs now, and answer when they are done",
            "security": [{"bearer": []}],
            "parameters": [
                _query("workers", {"type": "integer", "minimum": 1, "maximum": 32}, "Copies at once.")
            ],
            "responses": {
                "200": _json(_ref("MirrorDrained")),
                "409": _json(_ref("Error"), "Another mirror run holds the lock"),
                "422": _ERROR,
                **_ADMIN_ERRORS,
            },
        }
    },
}
