"""docs/operating.md is the operator's reference: it names every metric a real serve exposes with its
labels, every route class, the keys the status page reads, and shows the page it describes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cccatalog.server.metrics import ROUTE_CLASSES
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream
from tests.servefixtures import running_server, synced_config

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "operating.md").read_text()
MakeUpstream = Callable[[str], Upstream]


def test_every_metric_and_its_labels_are_documented(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        httpx.get(f"{server.url}/healthz")
        text = httpx.get(f"{server.url}/metrics").text

    rows = {m[0]: m[1] for m in re.findall(r"^\| `(cccatalog_\w+)` \| \w+ \|([^|]*)\|", GUIDE, flags=re.M)}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("process_"):
            continue
        documented = next(
            (rows[n] for n in (family.name, f"{family.name}_total", f"{family.name}_info") if n in rows), None
        )
        assert documented is not None, f"{family.name} is not in docs/operating.md"
        if family.samples:  # a labelled counter nothing has counted yet has none to compare
            labels = {label for s in family.samples for label in s.labels} - {"le"}
            assert set(re.findall(r"`(\w+)`", documented)) == labels, family.name


def test_route_classes_keys_and_screenshots_are_there() -> None:
    for route in ROUTE_CLASSES:
        assert f"`{route}`" in GUIDE
    for key in ("serve.path_prefix", "serve.freshness_budget_minutes"):
        assert f"`{key}`" in GUIDE
    for name in ("status-page-desktop.png", "status-page-phone.png"):
        shot = ROOT / "docs" / name
        assert f"({name})" in GUIDE or f'src="{name}"' in GUIDE
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size < 200_000, f"{name}: keep the screenshots small"
    assert "(docs/operating.md)" in (ROOT / "README.md").read_text()
