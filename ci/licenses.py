#!/usr/bin/env python3
"""Every crate MicroClaw builds with (both workspaces, dev and build dependencies
included) must be usable under a license on the allow-list below.

Reads `cargo metadata` and evaluates each crate's SPDX expression (OR, AND,
WITH, parentheses, and the legacy `/` for OR) against the list. A crate with
no `license` field must be listed in LICENSE_FILES, after someone read its file.
Exits 1 and names each crate that fails.

(`cargo deny check licenses` does this too, but building cargo-deny costs a
cold CI run ten minutes; its advisories check cannot run here anyway: the
RustSec database lives on GitHub, which this machine cannot reach.)
"""

import json
import re
import subprocess
import sys

ALLOWED = {
    "MIT", "MIT-0", "Apache-2.0", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Zlib", "Unlicense", "BSL-1.0", "Unicode-3.0", "CDLA-Permissive-2.0",
    "LLVM-exception", "NCSA",
}

# Crates whose license is only a file, as read by a person.
LICENSE_FILES = {"apalis-postgres": "MIT"}


def tokens(expression):
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expression.replace("/", " OR "))


def allowed(expression):
    """Evaluates an SPDX expression: OR binds looser than AND, WITH tightest."""
    items = tokens(expression)
    position = 0

    def peek():
        return items[position] if position < len(items) else None

    def take():
        nonlocal position
        position += 1
        return items[position - 1]

    def primary():
        if peek() == "(":
            take()
            value = disjunction()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {expression!r}")
            return value
        license_id = take()
        if peek() == "WITH":
            take()
            exception = take()
            return license_id in ALLOWED and exception in ALLOWED
        return license_id in ALLOWED

    def conjunction():
        value = primary()
        while peek() == "AND":
            take()
            value = primary() and value
        return value

    def disjunction():
        value = conjunction()
        while peek() == "OR":
            take()
            value = conjunction() or value
        return value

    value = disjunction()
    if position != len(items):
        raise ValueError(f"cannot read {expression!r}")
    return value


def self_check():
    """The evaluator itself: a broken one would let anything through."""
    for expression, expected in [
        ("MIT", True), ("GPL-3.0", False), ("MIT OR GPL-3.0", True),
        ("MIT AND GPL-3.0", False), ("(MIT OR Apache-2.0) AND Unicode-3.0", True),
        ("GPL-2.0 WITH Classpath-exception-2.0", False), ("Apache-2.0/MIT", True),
    ]:
        if allowed(expression) != expected:
            raise SystemExit(f"licenses.py is broken: {expression!r} should be {expected}")


def main():
    self_check()
    failures = []
    checked = set()
    for manifest in ["Cargo.toml", "fuzz/Cargo.toml"]:
        metadata = json.loads(
            subprocess.run(
                ["cargo", "metadata", "--format-version", "1", "--locked",
                 "--manifest-path", manifest],
                check=True, capture_output=True, text=True,
            ).stdout
        )
        local = set(metadata["workspace_members"])
        for package in metadata["packages"]:
            if package["id"] in local or package["source"] is None:
                continue
            key = (package["name"], package["version"])
            if key in checked:
                continue
            checked.add(key)
            expression = package.get("license") or LICENSE_FILES.get(package["name"])
            if expression is None:
                failures.append(f"{package['name']} {package['version']}: no license field")
                continue
            try:
                ok = allowed(expression)
            except ValueError as e:
                failures.append(f"{package['name']} {package['version']}: {e}")
                continue
            if not ok:
                failures.append(f"{package['name']} {package['version']}: {expression}")
    for failure in failures:
        print(f"license not allowed: {failure}")
    print(f"licenses: {len(checked)} crates checked, {len(failures)} not allowed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
