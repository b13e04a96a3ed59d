"""The config a running server uses *now*: reloaded on SIGHUP and when the file changes on disk.

A reload that fails validation keeps the previous config and logs every problem; a server never
drops to a half-valid config. Whoever must follow the config (the start-up backfill of mirrors found
on disk) registers in `listeners` and is called with each config that took effect.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from cccatalog.config import Config, load_config
from cccatalog.errors import ConfigError
from cccatalog.filestamp import stamp

log = logging.getLogger("cccatalog.serve")


class LiveConfig:
    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self._config = config
        self._environ = os.environ if environ is None else environ
        self._stamp = stamp(config.path)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.listeners: list[Callable[[Config], None]] = []
        # for the status page and /metrics: when the config in effect was loaded, and why the last
        # reload failed (None once one succeeds again)
        self.loaded_at = time.time()
        self.last_reload_error: str | None = None
        self.last_reload_failed_at: float | None = None

    @property
    def current(self) -> Config:
        return self._config

    def reload(self) -> bool:
        """Load the file again. True when the new config took effect."""
        with self._lock:
            path = self._config.path
            self._stamp = stamp(path)
            try:
                config = load_config(path, environ=self._environ)
            except ConfigError as exc:
                log.error("config reload failed, keeping the previous config: %s", exc)
                self.last_reload_error, self.last_reload_failed_at = str(exc), time.time()
                return False
            self._config = config
            self.loaded_at, self.last_reload_error = time.time(), None
        for warning in config.warnings:
            log.warning("%s: %s", path, warning)
        log.info("config reloaded from %s (%d CodeCollections)", path, len(config.codecollections))
        for listener in self.listeners:
            try:
                listener(config)
            except Exception:  # the new config is in effect; a follower's failure must not undo that
                log.exception("after reloading %s", path)
        return True

    def watch(self, interval: float = 2.0) -> threading.Thread:
        """Poll the file and reload when it changes (ConfigMap updates swap a symlink: inode changes)."""

        def loop() -> None:
            while not self._stop.wait(interval):
                if stamp(self._config.path) != self._stamp:
                    self.reload()

        thread = threading.Thread(target=loop, name="config-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
