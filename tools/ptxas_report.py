#!/usr/bin/env python3
"""Summarises a `ptxas -v` log: one line per kernel (registers, stack, spills, static
shared memory). Exits 1 if any kernel spills registers or no kernel was found.

Usage: ptxas_report.py PTXAS_LOG SOURCE ARCH
"""
import re
import sys


def main() -> int:
    log, cu, arch = sys.argv[1:4]
    text = open(log).read()
    bad = False
    blocks = re.split(r"ptxas info\s*: Compiling entry function ", text)[1:]
    for block in blocks:
        name = re.match(r"'([^']+)'", block).group(1)

        def num(pattern: str) -> int:
            m = re.search(pattern, block)
            return int(m.group(1)) if m else 0

        regs = num(r"Used (\d+) registers")
        stack = num(r"(\d+) bytes stack frame")
        st = num(r"(\d+) bytes spill stores")
        ld = num(r"(\d+) bytes spill loads")
        smem = num(r"(\d+) bytes smem")
        print(
            f"  {arch} {name}: {regs} registers, {stack} B stack, "
            f"{st}/{ld} B spill stores/loads, {smem} B static smem"
        )
        if st + ld > 0:
            print(f"check-kernels: FAIL: {name} spills registers on {arch} ({cu})")
            bad = True
    if not blocks:
        print(f"check-kernels: FAIL: no kernel found in the ptxas output for {cu} ({arch})")
        bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
