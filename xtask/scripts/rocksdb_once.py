#!/usr/bin/env python3
"""Checks that every cargo command of `cargo xtask demo` and `cargo xtask test` resolves the
same build of librocksdb-sys, so a fresh machine compiles RocksDB's C++ once (about 18 minutes
here). Prints one line per command and exits 1 when they differ, naming the units that do.

It reads cargo's unit graph (`--unit-graph`, unstable; enabled here on the stable toolchain
through cargo's channel override) and hashes the graph below librocksdb-sys's build-script run:
package, target, mode, features and profile settings (not the profile's name: cargo does not
hash it), as cargo's own metadata hash does.

Usage: python3 xtask/scripts/rocksdb_once.py   (from the workspace root)
"""
import hashlib
import json
import os
import re
import subprocess
import sys


def plugin_packages():
    """`PLUGIN_PACKAGES` of xtask/src/build.rs, the list the xtask builds."""
    text = open(os.path.join(os.path.dirname(__file__), "..", "src", "build.rs")).read()
    block = re.search(r"PLUGIN_PACKAGES: &\[&str\] = &\[(.*?)\];", text, re.S)
    if not block:
        sys.exit("rocksdb_once.py: no PLUGIN_PACKAGES in xtask/src/build.rs")
    return re.findall(r'"([^"]+)"', block.group(1))


PLUGINS = plugin_packages()
COMMANDS = {
    "build plugin set (nested)": ["build"] + [a for p in PLUGINS for a in ("-p", p)],
    "build plugin set and -p sandboxctl (demo, test)": ["build"] + [a for p in PLUGINS + ["sandboxctl"] for a in ("-p", p)],
    "build -p sandboxctl": ["build", "-p", "sandboxctl"],
    "clippy --workspace --all-targets (test)": ["check", "--workspace", "--all-targets"],
    "test --workspace --doc (test)": ["test", "--workspace", "--doc"],
    "nextest run --workspace (test)": ["test", "--workspace", "--no-run"],
    "bench factory --profile dev (nested-bench --factory)": ["bench", "--workspace", "--bench", "factory", "--profile", "dev", "--no-run"],
}
CRATE = "librocksdb-sys"


def unit_line(u):
    profile = {k: v for k, v in u["profile"].items() if k != "name"}
    return json.dumps([u["pkg_id"].split("#")[-1], u["target"]["name"], u["mode"], u["platform"],
                       u["features"], profile], sort_keys=True)


def below(units, roots):
    seen, stack = set(), list(roots)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(d["index"] for d in units[i]["dependencies"])
    return {unit_line(units[i]) for i in seen}


def graph(args):
    env = dict(os.environ, __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS="nightly")
    out = subprocess.run(["cargo"] + args + ["--unit-graph", "-Z", "unstable-options"], env=env,
                         check=True, capture_output=True, text=True).stdout
    units = json.loads(out)["units"]
    roots = [i for i, u in enumerate(units)
             if f"#{CRATE}@" in u["pkg_id"] and u["mode"] == "run-custom-build"]
    return below(units, roots)


def main():
    sets = {name: graph(args) for name, args in COMMANDS.items()}
    first_name, first = next(iter(sets.items()))
    ok = True
    for name, units in sets.items():
        digest = hashlib.sha1("\n".join(sorted(units)).encode()).hexdigest()[:12]
        print(f"{digest}  {len(units):3} units  {name}")
        if units != first:
            ok = False
            for line in sorted(units - first):
                print(f"    + {line[:200]}")
            for line in sorted(first - units):
                print(f"    - {line[:200]}  (as in {first_name})")
    print("librocksdb-sys: one build" if ok else "librocksdb-sys: built more than once")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
