#!/usr/bin/env python3
"""Every siphon_* series the alerts and the dashboard query is one the
binaries register: a renamed or misspelled metric makes an alert that never
fires, so `make chart-check` fails on it.

Registered names are read from the Rust sources (`Registry::with_prefix`
and `registry.register("name", ...)` in operator/src/metrics.rs and
worker/src/metrics.rs); an exposed name may carry the suffix its type adds
(_total, _bucket, _sum, _count).

usage: metric_names.py REPO_ROOT FILE...
"""

import re
import sys
from pathlib import Path

SOURCES = ["operator/src/metrics.rs", "worker/src/metrics.rs"]
SUFFIXES = ["", "_total", "_bucket", "_sum", "_count", "_created"]


def registered(root: Path) -> set[str]:
    names = set()
    for rel in SOURCES:
        text = (root / rel).read_text()
        prefix = re.search(r'Registry::with_prefix\(\s*"([a-z_]+)"\s*\)', text)
        if not prefix:
            sys.exit(f"metric_names: {rel} has no Registry::with_prefix(\"...\")")
        for m in re.finditer(r'\.register\(\s*"([a-z_]+)"', text):
            base = f"{prefix.group(1)}_{m.group(1)}"
            names.update(base + s for s in SUFFIXES)
    return names


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[1])
    known = registered(root)
    missing = {}
    for file in sys.argv[2:]:
        for name in sorted(set(re.findall(r"\bsiphon_[a-z_]+[a-z](?![a-z_*])", Path(file).read_text()))):
            if name not in known:
                missing.setdefault(name, []).append(file)
    for name, files in sorted(missing.items()):
        print(f"metric_names: {name} (in {', '.join(files)}) is registered by neither binary", file=sys.stderr)
    if missing:
        print(f"metric_names: register these in {' or '.join(SOURCES)}, or fix the name", file=sys.stderr)
        return 1
    print(f"metric_names: every siphon_* series of {len(sys.argv) - 2} file(s) is registered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
