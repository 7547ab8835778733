"""hostwatch's benchmark: N loopback targets, the daemon and its peers, measured from outside.

Run it with `make bench` (or `python -m bench --help`). It needs root: it runs everything in a
private network namespace of its own, where every 127.x.y.z answers on `lo` and nothing can
leave the machine. Nothing here is a test: numbers are printed, never asserted.
"""
