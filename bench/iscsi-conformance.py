#!/usr/bin/env python3
"""Runs libiscsi's iscsi-test-cu (family ALL, destructive tests allowed)
against one or more iSCSI LUN URLs and prints, per target, passed / failed
/ skipped per suite and in total, as a markdown table. A test counts as
skipped when it passed only by announcing [SKIPPED] (CUnit itself counts
those as passed).

Usage: iscsi-conformance.py LABEL=URL [LABEL=URL ...]
"""
import re
import subprocess
import sys
from collections import OrderedDict


def run(url):
    out = subprocess.run(
        ["iscsi-test-cu", "--dataloss", "--test=ALL", "-v", url],
        capture_output=True, text=True, errors="replace", timeout=3600,
    )
    text = out.stdout + out.stderr
    suites = OrderedDict()
    failed_tests = []
    suite = None
    current = None
    body = []

    def close(result):
        nonlocal current, body
        if current is None:
            return
        s = suites.setdefault(suite, [0, 0, 0])
        if result == "failed":
            s[1] += 1
            failed_tests.append(f"{suite}.{current}")
        elif any("[SKIPPED]" in b for b in body):
            s[2] += 1
        else:
            s[0] += 1
        current, body = None, []

    for line in text.splitlines():
        m = re.match(r"\s*Suite: (\S+)", line)
        if m:
            suite = m.group(1)
            continue
        m = re.match(r"\s*Test: (\S+) \.\.\.(.*)", line)
        if m:
            current, body = m.group(1), [m.group(2)]
            line = m.group(2)
        if current is None:
            continue
        body.append(line)
        if re.search(r"passed\s*$", line):
            close("passed")
        elif re.search(r"FAILED\s*$", line):
            close("failed")
    return suites, failed_tests


def main():
    results = OrderedDict()
    for arg in sys.argv[1:]:
        label, url = arg.split("=", 1)
        results[label] = run(url)
    labels = list(results)
    names = []
    for suites, _ in results.values():
        for n in suites:
            if n not in names:
                names.append(n)
    print("| suite | " + " | ".join(f"{l} passed/failed/skipped" for l in labels) + " |")
    print("|---|" + "---|" * len(labels))
    totals = {l: [0, 0, 0] for l in labels}
    for n in names:
        cells = []
        for l in labels:
            s = results[l][0].get(n)
            if s is None:
                cells.append("-")
                continue
            cells.append(f"{s[0]}/{s[1]}/{s[2]}")
            for i in range(3):
                totals[l][i] += s[i]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(
        f"**{t[0]}/{t[1]}/{t[2]}** of {sum(t)}" for t in totals.values()) + " |")
    for l in labels:
        failed = results[l][1]
        if failed:
            print(f"\n{l} failed: " + ", ".join(failed))


if __name__ == "__main__":
    main()
