#!/usr/bin/env python3
"""Counts the frames a running server appends to its SQLite WAL, and the rewinds it sees, by
polling the wal-index header (mxFrame, at byte 16 of the -shm file) every 2 ms.

    python3 bench/wal-frames.py <database>-shm <seconds>

A rewind shows as mxFrame going down; the frames after it count from zero. Polling misses the
frames written between the last poll before a rewind and the rewind, so the count is a lower bound.
"""
import struct
import sys
import time

shm, seconds = sys.argv[1], float(sys.argv[2])
frames, rewinds, last = 0, 0, None
end = time.time() + seconds
while time.time() < end:
    try:
        with open(shm, "rb") as f:
            mx_frame = struct.unpack_from("<I", f.read(48), 16)[0]
    except (OSError, struct.error):
        time.sleep(0.01)
        continue
    if last is not None:
        if mx_frame >= last:
            frames += mx_frame - last
        else:
            frames += mx_frame
            rewinds += 1
    last = mx_frame
    time.sleep(0.002)
print(f"frames {frames} rewinds {rewinds}")
