"""The dependency policy beside cargo audit (audit/policy.toml): no version known to be
vulnerable, every package from crates.io, every license on the allow-list; duplicate versions
are reported. Exits non-zero on the first three.

usage: deps_policy.py audit/policy.toml Cargo.lock < cargo-metadata.json
"""

import collections
import json
import re
import sys
import tomllib


def version(text):
    core = text.split("+")[0].split("-")[0]
    return tuple(int(p) for p in core.split("."))


def license_ok(expr, allowed):
    """Evaluates an SPDX expression ('/' read as OR) against the allowed licenses."""
    tokens = re.findall(r"\(|\)|[^\s()/]+|/", expr.replace("/", " / "))
    tokens = ["OR" if t == "/" else t for t in tokens]
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def factor():
        if peek() == "(":
            take()
            v = disjunction()
            take()  # ")"
            return v
        name = take()
        if peek() == "WITH":
            take()
            name = f"{name} WITH {take()}"
        return name in allowed

    def conjunction():
        v = factor()
        while peek() == "AND":
            take()
            v = factor() and v
        return v

    def disjunction():
        v = conjunction()
        while peek() == "OR":
            take()
            v = conjunction() or v
        return v

    return disjunction() and pos == len(tokens)


def main():
    with open(sys.argv[1], "rb") as f:
        policy = tomllib.load(f)
    with open(sys.argv[2], "rb") as f:
        locked = tomllib.load(f)["package"]
    metadata = json.load(sys.stdin)
    errors = []
    for entry in policy["bad"]:
        for p in locked:
            if p["name"] == entry["crate"] and version(p["version"]) < version(entry["fixed"]):
                errors.append(
                    f"known-vulnerable: {p['name']} {p['version']} (fixed in {entry['fixed']}; "
                    f"{', '.join(entry['ids'])}): {entry['what']}"
                )
    for p in locked:
        if "source" in p and p["source"] not in policy["sources"]:
            errors.append(f"source: {p['name']} {p['version']} comes from {p['source']}")
    allowed = set(policy["licenses"])
    for p in metadata["packages"]:
        if p["source"] is None:
            continue  # ours, and vendor/ (pingora's, Apache-2.0)
        lic = p.get("license")
        if not lic or not license_ok(lic, allowed):
            errors.append(f"license: {p['name']} {p['version']} is under {lic!r}")
    names = collections.Counter(p["name"] for p in locked)
    dups = sorted(n for n, c in names.items() if c > 1)
    print(
        f"dependency policy: {len(locked)} packages, {len(policy['bad'])} known-bad entries; "
        f"{len(dups)} crates in more than one version: {', '.join(dups)}"
    )
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
