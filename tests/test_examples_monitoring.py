"""The Prometheus examples are product surface too, checked offline like the other manifests: the pod's
scrape annotations name the serving port, the ServiceMonitor selects the Service and its port, and each
alert is valid PromQL (parsed by a PromQL parser) over metrics a real `serve` exposes. The state alert
is evaluated on what a real `serve` exposes before, during and after a real PostgreSQL outage."""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.gitfixtures import Upstream
from tests.pgfixtures import running_postgres
from tests.servefixtures import running_server, synced_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "examples" / "kubernetes"
MONITORING = K8S / "monitoring"
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")

# The fields of the monitoring.coreos.com/v1 CRDs these examples may use (a subset of the operator's
# schema: a typo or a field from another kind fails here as it would in `kubectl apply`).
SERVICE_MONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings"}
RULE = {"alert", "expr", "for", "labels", "annotations"}


def _doc(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


def _one(kind: str) -> dict[str, Any]:
    found = [
        d
        for p in sorted(K8S.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == kind
    ]
    assert len(found) == 1, kind
    doc: dict[str, Any] = found[0]
    return doc


def _metric_names(node: object) -> Iterator[str]:
    """Every metric a PromQL expression reads, from the parser's syntax tree."""
    if type(node).__name__ == "VectorSelector":
        yield str(node.name)  # type: ignore[attr-defined]
    for attr in ("lhs", "rhs", "expr", "vs", "param", "args"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None:
                yield from _metric_names(item)


def test_the_pod_is_annotated_for_scraping_on_its_serving_port() -> None:
    template = _one("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (container,) = template["spec"]["containers"]
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port["containerPort"]),
        "prometheus.io/path": "/metrics",
    }


def test_the_service_monitor_selects_the_service_and_its_port() -> None:
    monitor = _doc(MONITORING / "servicemonitor.yaml")
    service = _one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert set(monitor["spec"]) <= SERVICE_MONITOR_SPEC
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= ENDPOINT
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
        assert DURATION.fullmatch(endpoint["interval"])
        assert DURATION.fullmatch(endpoint["scrapeTimeout"])


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric names a real serve exposes, with a synced mirror."""
    tmp = tmp_path_factory.mktemp("exposed")
    up = Upstream(tmp / "up")
    config_path = tmp / "config.yaml"
    config_path.write_text(
        "git:\n  enabled: true\n  data_dir: mirrors\nsources:\n  - name: s\n    type: static\n"
        f"    codecollections:\n      - slug: alpha\n        git_url: {up.url}\n"
    )
    config = synced_config(config_path)
    with running_server(config) as server:
        text = httpx.get(f"{server.url}/metrics").text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_each_alert_is_valid_promql_over_exposed_metrics(exposed: set[str]) -> None:
    rule = _doc(MONITORING / "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == {
        "CCCatalogMirrorStale",
        "CCCatalogSyncFailing",
        "CCCatalogStateUnreadable",
    }
    for r in rules:
        assert set(r) <= RULE, r["alert"]
        assert DURATION.fullmatch(r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(r["annotations"])
        for text in r["annotations"].values():
            assert set(re.findall(r"\$labels\.(\w+)", text)) <= {"slug"}, text
        names = set(_metric_names(promql_parser.parse(r["expr"])))
        assert names, r["expr"]
        assert names <= exposed, names - exposed


def test_a_syntax_error_in_an_alert_would_be_caught() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(cccatalog_mirror_last_sync_failed")


def test_the_kustomization_names_the_monitoring_examples() -> None:
    text = (K8S / "kustomization.yaml").read_text()
    for path in sorted(MONITORING.glob("*.yaml")):
        assert f"monitoring/{path.name}" in text


# --- the state alert against a real outage ------------------------------------------------------------

Samples = dict[str, list[tuple[dict[str, str], float]]]
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def scrape(url: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def firing(expr: str, samples: Samples) -> list[dict[str, str]]:
    """The series an alert expression returns over one scrape: selectors compared with a number, the
    subset of PromQL the shipped state alert uses (anything else fails here, not silently)."""
    node = promql_parser.parse(expr)
    assert type(node).__name__ == "BinaryExpr", expr
    lhs, rhs = node.lhs, node.rhs  # type: ignore[attr-defined]
    assert type(lhs).__name__ == "VectorSelector", expr
    assert type(rhs).__name__ == "NumberLiteral", expr
    compare = _COMPARE[str(node.op)]  # type: ignore[attr-defined]
    return [labels for labels, value in samples.get(lhs.name, []) if compare(value, rhs.val)]


@pytest.mark.slow
def test_the_state_alert_fires_on_a_real_database_outage_and_clears_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (rule,) = [
        r
        for group in _doc(MONITORING / "prometheusrule.yaml")["spec"]["groups"]
        for r in group["rules"]
        if r["alert"] == "CCCatalogStateUnreadable"
    ]
    up = Upstream(tmp_path / "up")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        "git:\n  enabled: true\n  data_dir: mirrors\nsources:\n  - name: s\n    type: static\n"
        f"    codecollections:\n      - slug: alpha\n        git_url: {up.url}\n"
    )
    with running_postgres() as pg:
        monkeypatch.setenv("CCCATALOG_STATE_URL", pg.create_database())
        config = synced_config(config_path)
        with running_server(config) as server:
            before = scrape(server.url)  # scraped before the outage: the case that hid it
            pg.stop()
            during = [scrape(server.url) for _ in range(20)]
            time.sleep(1.1)
            later = scrape(server.url)
            pg.start()
            deadline = time.monotonic() + 60
            while firing(rule["expr"], after := scrape(server.url)) and time.monotonic() < deadline:
                time.sleep(0.5)
    assert firing(rule["expr"], before) == []
    assert [len(firing(rule["expr"], s)) for s in during] == [1] * 20, "fires on every scrape of the outage"
    assert all(s["cccatalog_mirror_servable"] for s in during), "the last good read is still shown"
    (age,) = later["cccatalog_state_last_read_age_seconds"]
    assert age[1] >= 1.0
    (last,) = later["cccatalog_state_last_read_timestamp_seconds"]
    assert last[1] == before["cccatalog_state_last_read_timestamp_seconds"][0][1], "no read since"
    assert firing(rule["expr"], after) == [], "clears once the database answers again"
    assert after["cccatalog_state_last_read_age_seconds"][0][1] < 5
