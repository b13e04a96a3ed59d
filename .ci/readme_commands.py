"""Print the README's first two shell commands, one per line: CI runs exactly what the README says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> int:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = [block.strip() for block in blocks[:2]]
    if len(commands) != 2 or any("\n" in c for c in commands):
        sys.stderr.write("README.md must open with two one-line ```sh blocks: install+demo, then tests\n")
        return 1
    sys.stdout.write("\n".join(commands) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
