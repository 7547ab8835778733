"""hostwatch.heap: large buffers get mappings of their own, returned when freed (the real
glibc, in a fresh interpreter each time, since the setting is for the whole process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Except for "reuse", a 2 MB buffer is freed first: glibc then raises its threshold to 2 MB,
# unless the setting turned that off. Then ten 600 kB buffers: where they live (in the heap,
# or not), and how much of them stays resident once they are freed.
_SCRIPT = """
import sys
from hostwatch.heap import return_large_buffers, reuse_freed_memory

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

def in_heap(address):
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                if low <= address < high:
                    return True
    return False

mode = sys.argv[1]
took = {"set": return_large_buffers, "reuse": reuse_freed_memory}.get(mode, lambda: None)()
if mode != "reuse":
    first = b"x" * 2_000_000
    del first
base = rss_kib()
held = [b"x" * 600_000 for _ in range(10)]
heaped = sum(in_heap(id(buffer)) for buffer in held)
del held
print(took, heaped, rss_kib() - base)
"""


def _run(mode: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_get_their_own_mappings() -> None:
    """With the setting, none of the ten buffers is in the heap and nothing of their 6 MB
    stays resident after they are freed. Without it (the same steps) they are all in the
    heap: the test sees it when the setting does nothing."""
    took, heaped, kept_kib = _run("set")
    assert (took, heaped) == ("True", 0)
    assert kept_kib < 512
    _, heaped_without, _ = _run("unset")
    assert heaped_without == 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_renderer_keeps_large_buffers_in_the_heap() -> None:
    """For a forked renderer, the ten buffers come from the heap even in a fresh process
    (where glibc would give each its own mapping), so freed pages serve the next buffer."""
    took, heaped, _ = _run("reuse")
    assert (took, heaped) == ("True", 10)
