"""`cccatalog manifest`: what this site has, to carry to `export --since` — its mirrors and catalog
(`cccatalog.manifest.site_manifest`) and what its registry already holds of the catalog's images
(`transfer.images.site_images`), so an export leaves out what is there."""

from __future__ import annotations

from collections.abc import Mapping

from cccatalog.config import Config
from cccatalog.gitmirror.git import Git
from cccatalog.manifest import dumps, site_manifest
from cccatalog.transfer.images import site_images


def describe_site(config: Config, git: Git, *, environ: Mapping[str, str] | None = None) -> bytes:
    """`cccatalog manifest`: this site's manifest, reading the state file only when there is one.
    With `environ` (its credentials), also what the site registry holds of the catalog's images
    (`images`), so an export leaves out what is there."""
    if config.state.url is None and not config.state.path.is_file():
        return dumps(site_manifest(config, git, None))
    from cccatalog.catalog.store import Store

    with Store.for_config(config) as store:
        doc = site_manifest(config, git, store)
        rows = {cc.slug: store.list_image_refs(cc.slug) for cc in config.codecollections}
    if environ is not None:
        doc["images"] = site_images(config, rows, environ=environ, redactor=git.redactor)
    return dumps(doc)
