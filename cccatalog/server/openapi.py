"""The OpenAPI 3 document of serve's JSON API (`GET /api/openapi.json`). Written by hand, checked by a
test against a validator and against the router (every documented path answers)."""

from __future__ import annotations

from typing import Any

from cccatalog import __version__
from cccatalog.server import openapi_mirror


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "Error")
_SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN_ERRORS = {
    "401": _json(_ref("Error"), "No bearer token"),
    "403": _json(_ref("Error"), "Wrong bearer token"),
    "503": _json(_ref("Error"), "No admin token configured"),
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _nullable(kind: str, fmt: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind, "nullable": True}
    if fmt:
        schema["format"] = fmt
    return schema


_S, _T = _nullable("string"), _nullable("string", "date-time")
_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
    "CatalogEntry": {
        "type": "object",
        "required": ["slug", "git_url", "visibility"],
        "properties": {
            "slug": {"type": "string"},
            "name": _S,
            "git_url": _S,
            "visibility": {"type": "string", "enum": ["public", "hidden"]},
            "latest_image_tag": _S,
            "stable_image_tag": _S,
            "image_registry": _S,
            "last_synced": _T,
        },
    },
    "ImageRef": {
        "type": "object",
        "required": ["ref", "image_tag", "is_latest", "is_active"],
        "properties": {
            "ref": {"type": "string"},
            "ref_type": _S,
            "image_registry": _S,
            "image_tag": {"type": "string"},
            "image_digest": _S,
            "commit_hash": _S,
            "rt_revision": _S,
            "image_built_at": _T,
            "built_at_source": _S,
            "is_latest": {"type": "boolean"},
            "is_prerelease": {"type": "boolean"},
            "is_active": {"type": "boolean"},
            "synced_at": _T,
        },
    },
    "Resolved": {
        "type": "object",
        "required": ["slug", "requested", "image_tag"],
        "properties": {
            "slug": {"type": "string"},
            "requested": {"type": "string"},
            "image_tag": {"type": "string"},
            "image_registry": _S,
            "image_digest": _S,
            "commit_hash": _S,
            "rt_revision": _S,
            "destination": {**_S, "description": "The destination asked for"},
            "target_image_ref": {
                **_S,
                "description": "The build on that destination; null until it holds it",
            },
            "target_digest": {**_S, "description": "Its digest there (the source's)"},
        },
    },
    "GitSummary": {
        "type": "object",
        "required": ["enabled", "runtime_sync", "repos_processed", "repos_updated", "errors"],
        "properties": {
            "enabled": {"type": "boolean"},
            "runtime_sync": {"type": "boolean"},
            "repos_processed": {"type": "integer"},
            "repos_updated": {"type": "integer", "description": "Repos synced successfully"},
            "repos_changed": {"type": "integer", "description": "Repos whose refs changed"},
            "errors": {"type": "array", "items": _ref("SyncError")},
            "skipped": {"type": "string"},
            "repos": {"type": "array", "items": {"type": "object"}},
        },
    },
    "CatalogSummary": {
        "type": "object",
        "required": ["collections_processed", "refs_upserted", "refs_deactivated", "errors"],
        "properties": {
            "collections_processed": {"type": "integer", "description": "Collections polled successfully"},
            "refs_upserted": {"type": "integer"},
            "refs_deactivated": {"type": "integer"},
            "errors": {"type": "array", "items": _ref("SyncError")},
            "skipped": {"type": "string"},
            "held_back": {"type": "array", "items": {"type": "string"}},
        },
    },
    "SyncError": {
        "type": "object",
        "required": ["slug", "error"],
        "properties": {"source": {"type": "string"}, "slug": {"type": "string"}, "error": {"type": "string"}},
    },
    "Reloaded": {
        "type": "object",
        "required": ["status", "sources", "destinations", "codecollections"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "sources": {"type": "integer"},
            "destinations": {"type": "integer"},
            "codecollections": {"type": "integer"},
        },
    },
    "GitRepo": {
        "type": "object",
        "required": ["slug", "present"],
        "properties": {
            "slug": {"type": "string"},
            "upstream_url": _S,
            "public_url": _S,
            "present": {"type": "boolean"},
            "head_commit": _S,
            "default_branch": _S,
            "last_synced": _T,
            "last_sync_error": _S,
            "freshness_seconds": _nullable("integer"),
            "local_path": {"type": "string"},
            "replica": {
                **_S,
                "description": "The replica that answered: present, local_path and the status are of its "
                "own mirror volume (serve.replica_id, else its hostname)",
            },
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "kind", "state"],
        "properties": {
            "job_id": {"type": "string"},
            "kind": {"type": "string"},
            "state": {"type": "string", "enum": ["running", "succeeded", "failed"]},
            "started_at": _T,
            "finished_at": _T,
            "result": _nullable("object"),
            "error": _S,
            "replica": {**_S, "description": "The replica that runs (or ran) the job"},
            "url": {"type": "string"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Manifest": {
        "type": "object",
        "required": ["format", "kind", "repos", "collections", "catalog"],
        "properties": {
            "format": {"type": "string", "enum": ["cccatalog-manifest/1"]},
            "kind": {"type": "string", "enum": ["site"]},
            "cccatalog_version": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "collections": {"type": "array", "items": {"type": "string"}},
            "repos": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["slug", "refs", "refs_fingerprint"],
                    "properties": {
                        "slug": {"type": "string"},
                        "upstream_url": _S,
                        "default_branch": _S,
                        "head_commit": _S,
                        "refs": {"type": "object", "additionalProperties": {"type": "string"}},
                        "refs_fingerprint": {"type": "string"},
                    },
                },
            },
            "catalog": {
                "type": "object",
                "nullable": True,
                "properties": {"digest": {"type": "string"}, "refs": {"type": "object"}},
            },
        },
    },
}


def _admin_post(summary: str, extra: list[dict[str, Any]], result: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": extra,
            "responses": {
                "200": _json(_ref(result), "Finished (wait=true or reload)"),
                "202": _json(_ref("Job"), "Started as a background job"),
                "409": _json(_ref("Error"), "A job of this kind is already running"),
                "422": _json(_ref("Error"), "Invalid query value, or an invalid config on reload"),
                "500": _json(_ref("Error"), "The sync failed (wait=true)"),
                **_ADMIN_ERRORS,
            },
        }
    }


_WAIT = _query(
    "wait", {"type": "boolean", "default": False}, "Answer when the sync is done, with its summary."
)
_ALLOW = _query("allow_runtime_sync", {"type": "boolean", "default": False}, "Pass the air-gap guard.")

PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(_ref("Health"))}}},
    "/readyz": {
        "get": {
            "summary": "Readiness: state reachable, data_dir present, baked mirrors as listed",
            "responses": {"200": _json(_ref("Health")), "503": _json(_ref("Health"), "Not ready")},
        }
    },
    "/api/v1/catalog/codecollections": {
        "get": {
            "summary": "CodeCollections, ordered by slug",
            "parameters": [
                _query(
                    "visibility", {"type": "string", "enum": ["public", "hidden"]}, "Only this visibility."
                ),
                _query("only_with_image", {"type": "boolean", "default": True}, "Only those with an image."),
            ],
            "responses": {"200": _json({"type": "array", "items": _ref("CatalogEntry")}), "422": _ERROR},
        }
    },
    "/api/v1/catalog/codecollections/{slug}": {
        "get": {
            "summary": "One CodeCollection with its active refs (hidden ones too)",
            "parameters": [_SLUG],
            "responses": {
                "200": _json(
                    {
                        "allOf": [
                            _ref("CatalogEntry"),
                            {
                                "type": "object",
                                "properties": {"refs": {"type": "array", "items": _ref("ImageRef")}},
                            },
                        ]
                    }
                ),
                "404": _ERROR,
            },
        }
    },
    "/api/v1/catalog/codecollections/{slug}/refs": {
        "get": {
            "summary": "The newest build of each ref",
            "parameters": [
                _SLUG,
                _query("include_inactive", {"type": "boolean", "default": False}, "Include gone refs."),
            ],
            "responses": {"200": _json({"type": "array", "items": _ref("ImageRef")}), "404": _ERROR},
        }
    },
    "/api/v1/catalog/codecollections/{slug}/refs/{ref}": {
        "get": {
            "summary": "One ref, inactive ones too (refs containing '/' work, raw or percent-encoded)",
            "parameters": [
                _SLUG,
                {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_ref("ImageRef")), "404": _ERROR},
        }
    },
    "/api/v1/catalog/codecollections/{slug}/resolve": {
        "get": {
            "summary": "Resolve a pointer (latest, stable) or a ref to an image",
            "parameters": [
                _SLUG,
                _query("pointer", {"type": "string", "enum": ["latest", "stable"]}, "A named pointer."),
                _query("ref", {"type": "string"}, "A ref name (branch or tag)."),
                _query("destination", {"type": "string"}, "Also where that destination holds the build."),
            ],
            "responses": {"200": _json(_ref("Resolved")), "400": _ERROR, "404": _ERROR, "422": _ERROR},
        }
    },
    "/api/v1/git/repos": {
        "get": {
            "summary": "Git mirrors and their status",
            "responses": {"200": _json({"type": "array", "items": _ref("GitRepo")}), "404": _ERROR},
        }
    },
    "/api/v1/git/repos/{slug}": {
        "get": {
            "summary": "One git mirror, with its local path",
            "parameters": [_SLUG],
            "responses": {"200": _json(_ref("GitRepo")), "404": _ERROR},
        }
    },
    "/api/v1/manifest": {
        "get": {
            "summary": "What this site has (every ref of every mirror, the image refs): "
            "what `cccatalog export --since` reads",
            "responses": {"200": _json(_ref("Manifest"))},
        }
    },
    "/api/v1/admin/sync-git": _admin_post("Sync the git mirrors", [_ALLOW, _WAIT], "GitSummary"),
    "/api/v1/admin/sync-catalog": _admin_post(
        "Poll the image sources (registries, static files, upstream catalogs)",
        [_ALLOW, _WAIT],
        "CatalogSummary",
    ),
    "/api/v1/admin/reload-config": _admin_post("Reload the config file", [], "Reloaded"),
    "/api/v1/admin/jobs/{job_id}": {
        "get": {
            "summary": "A sync job's state and summary",
            "security": [{"bearer": []}],
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(_ref("Job")), "404": _ERROR, **_ADMIN_ERRORS},
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "cccatalog",
            "version": __version__,
            "description": "CodeCollection catalog and git mirrors.",
        },
        "paths": {**PATHS, **openapi_mirror.PATHS},
        "components": {
            "schemas": {**_SCHEMAS, **openapi_mirror.SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
