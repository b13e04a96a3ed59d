"""The status page as a test reads it: an HTML parser keeping ids, attributes and text, and the
scenario most page tests serve (a fresh repo, one whose sync fails, and a hidden collection)."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from cccatalog.cli import run
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream
from tests.servefixtures import synced_config

MakeUpstream = Callable[[str], Upstream]


class Page(HTMLParser):
    """The page parsed: element ids, every attribute value and the text, to assert on structure."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("id"):
            self.ids[str(attributes["id"])] = attributes

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def three_repos(make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path) -> Path:
    """fresh (synced), failing (synced once, then its upstream went away), hidden (synced, hidden)."""
    fresh, failing = make_upstream("fresh"), make_upstream("failing")
    path = write_config({"fresh": fresh.url, "failing": failing.url, "secretive": fresh.url})
    text = path.read_text().replace(
        f"      - slug: secretive\n        git_url: {fresh.url}\n",
        f"      - slug: secretive\n        git_url: {fresh.url}\n        visibility: hidden\n",
    )
    path.write_text(text)
    synced_config(path)
    failing.path.rename(tmp_path / "failing-moved")
    assert run(["-q", "sync", "-c", str(path)]) == 1
    return path
