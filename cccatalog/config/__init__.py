"""YAML config -> typed, frozen objects; the only package that reads the raw config.

The file format is the predecessor's (cc-catalog-svc) plus a few keys of cccatalog's own; every
problem is reported with its key path, all at once, and unknown keys are refused.

- `settings`: the table — `setting(...)` declares each key's default, range or choices and help;
- `model`, `auth`, `destinations`: the dataclasses, one per block, their keys declared with `setting`;
- `reader`: typed getters with key paths, and `read_settings`, which reads a block by its table;
- `sections`, `mirroring`: what a table cannot say (credentials, slugs, URLs, keys that depend on
  each other), for the catalog's blocks and for `destinations:`;
- `state`, `state_urls`: where the state lives, and database URLs;
- `urls`: git, catalog and registry URLs as the config accepts them;
- `loading`: the file, the top level, and `ConfigError`.

Slugs and image repository paths are `cccatalog.names`, importable without the rest.
"""

from cccatalog.config.auth import AuthConfig, DestinationAuth
from cccatalog.config.destinations import Destination, DestinationType, MirrorFilter, Pointer
from cccatalog.config.loading import config_path_from_env, load_config, parse_config
from cccatalog.config.model import (
    DEFAULT_DATA_DIR,
    CodeCollection,
    Config,
    GitConfig,
    ImagesConfig,
    RefScope,
    SchedulerConfig,
    ServeConfig,
    Source,
    SourceType,
    StateConfig,
    TransferConfig,
    Visibility,
)
from cccatalog.config.sections import is_path_prefix
from cccatalog.config.settings import Setting, setting, settings
from cccatalog.names import SLUG_RULE, is_valid_slug

__all__ = [
    "DEFAULT_DATA_DIR",
    "SLUG_RULE",
    "AuthConfig",
    "CodeCollection",
    "Config",
    "Destination",
    "DestinationAuth",
    "DestinationType",
    "GitConfig",
    "ImagesConfig",
    "MirrorFilter",
    "Pointer",
    "RefScope",
    "SchedulerConfig",
    "ServeConfig",
    "Setting",
    "Source",
    "SourceType",
    "StateConfig",
    "TransferConfig",
    "Visibility",
    "config_path_from_env",
    "is_path_prefix",
    "is_valid_slug",
    "load_config",
    "parse_config",
    "setting",
    "settings",
]
