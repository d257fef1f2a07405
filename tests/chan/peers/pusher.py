"""A fast sender into a reader that does not read (the slow-reader test).

    pusher.py ENDPOINT MESSAGES MEGABYTES

1. Connects, opens channel ``tx`` and a probe channel ``ptx``, and sends on ``tx`` one
   message ``{"data": ByteStream, "probe": ByteStream}`` (two streams).
2. Probe: sends ``{"probe": n}`` on ``ptx`` and writes 64 KiB of ``b"p"`` at a time to
   the probe stream with ``timeout=0.3`` until each raises chan.Timeout; prints
   ``PROBED <messages taken> <bytes taken> <Timeout raised by send> <by write>``.
3. Pushes, from two threads and without timeouts: MESSAGES messages ``{"i": i,
   "pad": 200 bytes}`` on ``tx`` then closes it; MEGABYTES MiB of :func:`chunk` (k) into
   the data stream (1 MiB writes) then closes its writing side.  Prints ``PUSHING`` when
   the threads start and ``DONE`` once both closes returned (everything was delivered),
   then closes the session (which waits until the reader took the probes too) and exits.
"""

import os
import struct
import sys
import threading
import traceback

import chan

from _common import die_with_parent, say

MIB = 1 << 20
_BASE = bytes(range(256)) * (MIB // 256)


def chunk(k: int) -> bytes:
    """The k-th MiB of the data stream (the reader regenerates it to compare)."""
    return struct.pack(">Q", k) + _BASE[8:]


def message(i: int) -> dict:
    return {"i": i, "pad": bytes([i % 251]) * 200}


def main() -> None:
    endpoint, n_msgs, n_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    session = chan.connect(endpoint, timeout=10)
    tx = session.open()
    data_mine, data_theirs = chan.stream_pair()
    probe_mine, probe_theirs = chan.stream_pair()
    tx.send({"data": data_theirs, "probe": probe_theirs})
    ptx = session.open()

    taken_msgs = 0
    send_timeout = False
    while taken_msgs < 1_000_000:
        try:
            ptx.send({"probe": taken_msgs}, timeout=0.3)
        except chan.Timeout:
            send_timeout = True
            break
        taken_msgs += 1
    taken_bytes = 0
    write_timeout = False
    block = b"p" * 65536
    while taken_bytes < 1 << 30:
        try:
            probe_mine.write(block, timeout=0.3)
        except chan.Timeout as exc:
            write_timeout = True
            taken_bytes += getattr(exc, "written", 0)  # a partial write
            break
        taken_bytes += len(block)
    say("PROBED", taken_msgs, taken_bytes, int(send_timeout), int(write_timeout))

    errors = []

    def push_messages() -> None:
        try:
            for i in range(n_msgs):
                tx.send(message(i))
            tx.close()
        except BaseException as exc:
            errors.append(exc)
            traceback.print_exc()

    def push_bytes() -> None:
        try:
            for k in range(n_mib):
                data_mine.write(chunk(k))
            data_mine.close_write()
        except BaseException as exc:
            errors.append(exc)
            traceback.print_exc()

    threads = [threading.Thread(target=push_messages), threading.Thread(target=push_bytes)]
    for t in threads:
        t.start()
    say("PUSHING")
    for t in threads:
        t.join()
    if errors:
        say("FAILED", repr(errors))
        os._exit(3)
    say("DONE")
    session.close(timeout=10)
    os._exit(0)


if __name__ == "__main__":
    die_with_parent()
    main()
