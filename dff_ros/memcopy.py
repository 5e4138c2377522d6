"""Process environment that keeps large memory copies fast (set before a node process starts).

glibc before 2.39 copies blocks from a few KiB up to its non-temporal threshold with
`rep movsb`. On AMD Zen that instruction runs ~10x slower when source and destination alias
within a 4 KiB page (glibc bug 30994, fixed in 2.39). A node copies every received message
twice on its way to Python (rosidl's `bytes` then `array.array` for `uint8[]`), and those copies
hit it: measured here, a 512 KB copy took 16 us or 230 us depending on where malloc put the
buffers, and the receiver spent a third of its time in them. Raising the tunable's threshold
above any message keeps glibc on its vector loop, which is as fast on every x86 and has no such
case. The malloc thresholds (below) keep big buffers from costing page faults. ld.so reads
GLIBC_TUNABLES at start, so it goes in a child's environment; other CPUs and
libcs ignore the x86 key. `dff_ros.procenv` puts it in a node's environment.
"""
from __future__ import annotations


REP_MOVSB_THRESHOLD = "glibc.cpu.x86_rep_movsb_threshold"
NEVER = 1 << 40   # no message is this large
# Every received message is a fresh multi-MB buffer. Above glibc's mmap threshold each one is
# mmapped, first-touched page by page and unmapped again, and below it a freed top of the heap
# goes back to the kernel (trim): either way ~2000 page faults per 8 MB message, which took half
# of the activation stream's time. Kept in the heap (the largest mmap threshold glibc takes, and
# no trimming below 256 MB), the buffers are reused warm.
MALLOC = {"glibc.malloc.mmap_threshold": 32 << 20, "glibc.malloc.trim_threshold": 256 << 20}
TUNABLES = {REP_MOVSB_THRESHOLD: NEVER, **MALLOC}


def glibc_tunables(current: str) -> str:
    """``current`` GLIBC_TUNABLES with ours added; a value the user set wins."""
    entries = [e for e in current.split(":") if e]
    named = {e.split("=", 1)[0] for e in entries}
    return ":".join([*entries, *(f"{k}={v}" for k, v in TUNABLES.items() if k not in named)])
