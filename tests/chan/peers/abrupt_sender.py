"""Connects, sends N messages on one channel, closes, and exits at once.

    abrupt_sender.py ENDPOINT RUN N PAD

Message i is ``{"run": RUN, "i": i, "pad": bytes([i % 256]) * PAD}``.  Right after the
Sender's and the Session's close() return, the process leaves with ``os._exit(0)``: no
atexit handlers, no zmq context termination, no linger.  Whatever chan's close promised
as delivered must have arrived.  Exit status 3 means a close raised (traceback on stderr).
"""

import os
import sys
import traceback

import chan


def main() -> None:
    endpoint, run, n, pad = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    try:
        session = chan.connect(endpoint, timeout=10)
        tx = session.open()
        for i in range(n):
            tx.send({"run": run, "i": i, "pad": bytes([i % 256]) * pad}, timeout=10)
        tx.close(timeout=10)
        session.close(timeout=10)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    os._exit(0)


if __name__ == "__main__":
    main()
