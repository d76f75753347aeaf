#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite report (index.json) strictly.

    summarize.py REPORT_DIR [--agent wschat]

A case passes when its behavior and its close behavior are OK or
INFORMATIONAL. NON-STRICT, FAILED, WRONG CODE, UNCLEAN and UNIMPLEMENTED
fail: wschat negotiates permessage-deflate, so groups 12 and 13 must pass
too. Prints a table per group and 'autobahn: N passed, N failed'.
"""
import collections, json, os, sys

PASS = {"OK", "INFORMATIONAL"}


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    out = args[0]
    agent = args[args.index("--agent") + 1] if "--agent" in args else "wschat"
    index = json.load(open(os.path.join(out, "index.json")))
    results = index[agent]
    groups = collections.OrderedDict()
    bad = []
    key = lambda case: [int(p) for p in case.split(".")]
    for case in sorted(results, key=key):
        r = results[case]
        group = case.split(".")[0]
        b, bc = r["behavior"], r["behaviorClose"]
        ok = b in PASS and bc in PASS
        c = groups.setdefault(group, collections.Counter())
        c["passed" if ok else "failed"] += 1
        c[b] += 1
        if not ok:
            bad.append((case, b, bc, r.get("remoteCloseCode")))
    print(f"{'group':>6} {'cases':>6} {'passed':>7}  behaviors")
    for name, c in groups.items():
        total = c["passed"] + c["failed"]
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if k not in ("passed", "failed"))
        print(f"{name:>6} {total:>6} {c['passed']:>7}  {kinds}")
    for case, b, bc, code in bad:
        print(f"  falls short: case {case}: behavior {b}, close {bc}, close code {code}")
    passed = sum(c["passed"] for c in groups.values())
    print(f"autobahn: {passed} passed, {len(bad)} failed")
    sys.exit(1 if bad or passed == 0 else 0)


if __name__ == "__main__":
    main()
