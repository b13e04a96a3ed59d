"""Import every module of the installed cccatalog package: in a virtualenv holding only what the
package declares, an undeclared import fails here instead of on a user's machine."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import cccatalog


def main() -> int:
    names = [m.name for m in pkgutil.walk_packages(cccatalog.__path__, prefix="cccatalog.")]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every module, not just the first
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    for line in failed:
        sys.stderr.write(line + "\n")
    sys.stdout.write(
        f"imported {len(names) - len(failed)} of {len(names)} modules from {cccatalog.__file__}\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
