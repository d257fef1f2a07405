"""A client that hands a listener ends of every kind, then idles until it is killed.

    holder.py ENDPOINT

Connects, opens a channel and sends on it one message holding, at several depths:
a Sender (the listener can send to us), a Receiver (we feed it: ``"hi"`` is sent into
it at once) and a ByteStream (we write ``b"hello"`` into it at once):
``{"reply": [Sender], "feed": {"deep": Receiver}, "stream": ByteStream}``.
Prints ``READY`` and then keeps the session alive (heartbeats) until SIGKILLed.
"""

import sys
import threading

import chan

from _common import die_with_parent, say


def main() -> None:
    session = chan.connect(sys.argv[1], timeout=10)
    tx = session.open()
    reply_tx, reply_rx = chan.pipe()
    feed_tx, feed_rx = chan.pipe()
    mine, theirs = chan.stream_pair()
    tx.send({"reply": [reply_tx], "feed": {"deep": feed_rx}, "stream": theirs})
    feed_tx.send("hi")
    mine.write(b"hello")
    keep = [session, tx, reply_rx, feed_tx, mine]  # noqa: F841 (kept alive on purpose)
    say("READY")
    threading.Event().wait()


if __name__ == "__main__":
    die_with_parent()
    main()
