"""Writes 64 KiB chunks into a stream it sends (the stream memory test).

    stream_writer.py ENDPOINT CHUNKS

Connects, sends ``{"stream": ByteStream}`` on a new channel, writes ``WARMUP`` chunks,
then CHUNKS more while counting this process's minor page faults, closes its writing
side, prints ``FAULTS <minor faults per measured chunk>`` and exits once the session
closed (everything was delivered).
"""

import resource
import sys

import chan

from _common import die_with_parent, say

WARMUP = 64
CHUNK = bytes(range(256)) * 256


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    endpoint, n = sys.argv[1], int(sys.argv[2])
    with chan.connect(endpoint, timeout=10) as session:
        mine, theirs = chan.stream_pair()
        session.open().send({"stream": theirs})
        for _ in range(WARMUP):
            mine.write(CHUNK)
        before = minor_faults()
        for _ in range(n):
            mine.write(CHUNK)
        faults = minor_faults() - before
        mine.close()
        say("FAULTS", faults / n)


if __name__ == "__main__":
    die_with_parent()
    main()
