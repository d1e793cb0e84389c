#!/usr/bin/env python3
"""Prints the slowest tests of a ctest run from its JUnit report (ctest
--output-junit FILE), with each one's status and the run's total test time.

  ci/slowest_tests.py build/ctest-junit.xml [N=10]
"""
import sys
import xml.etree.ElementTree as ET


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    count = int(sys.argv[2]) if len(sys.argv) == 3 else 10
    cases = []
    for case in ET.parse(sys.argv[1]).iter("testcase"):
        status = "failed" if case.find("failure") is not None else case.get("status", "?")
        cases.append((float(case.get("time", "0")), case.get("name"), status))
    cases.sort(key=lambda c: -c[0])
    total = sum(seconds for seconds, _, _ in cases)
    print(f"slowest {min(count, len(cases))} of {len(cases)} tests "
          f"({total:.0f} s of test time in all):")
    for seconds, name, status in cases[:count]:
        print(f"  {seconds:7.1f} s  {name}" + ("" if status == "run" else f"  [{status}]"))


if __name__ == "__main__":
    main()
