#!/usr/bin/env python3
"""Prints the N slowest tests of a ctest JUnit report (scripts/test.sh writes build/test-results.xml),
with the summed test time, so that drift in the suite's duration shows up in CI logs.

usage: slowest_tests.py REPORT.xml [N]   (N defaults to 10)"""
import sys
import xml.etree.ElementTree as ET


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        root = ET.parse(argv[1]).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"slowest_tests: {argv[1]}: cannot read the JUnit report: {e}", file=sys.stderr)
        return 3
    count = int(argv[2]) if len(argv) == 3 else 10
    cases = [(float(c.get("time", 0)), c.get("name", "?"), c.find("failure") is not None or c.get("status") == "fail")
             for c in root.iter("testcase")]
    cases.sort(reverse=True)
    total = sum(t for t, _, _ in cases)
    print(f"{len(cases)} tests, {total:.0f} s of test time in all; the {min(count, len(cases))} slowest:")
    for t, name, failed in cases[:count]:
        print(f"  {t:8.1f} s  {name}{'  (failed)' if failed else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
