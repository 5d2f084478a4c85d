"""Fails when Cargo.lock resolves a crate version listed in audit/known-bad.toml (vulnerable
versions the offline RustSec snapshot may predate).

usage: known_bad.py audit/known-bad.toml Cargo.lock
"""

import sys
import tomllib


def version(text):
    core = text.split("+")[0].split("-")[0]
    return tuple(int(p) for p in core.split("."))


def main():
    with open(sys.argv[1], "rb") as f:
        bad = tomllib.load(f)["bad"]
    with open(sys.argv[2], "rb") as f:
        packages = tomllib.load(f)["package"]
    found = []
    for entry in bad:
        for p in packages:
            if p["name"] == entry["crate"] and version(p["version"]) < version(entry["fixed"]):
                found.append(
                    f"{p['name']} {p['version']} (fixed in {entry['fixed']}; "
                    f"{', '.join(entry['ids'])}): {entry['what']}"
                )
    for line in found:
        print(f"known-vulnerable dependency: {line}", file=sys.stderr)
    print(f"known-bad list: {len(bad)} entries checked against {len(packages)} packages")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
