"""Fan-in: many clients, each with its own session, send to one server that counts.

Each client (a thread here; a separate process would do exactly the same) connects with
its own session, opens a channel and sends a first message carrying an ``ack`` Sender,
then numbered messages, and closes the channel.  ``close()`` returns once the server has
received everything sent on it (chan acknowledges the end of a channel), so nothing is
lost silently.  The server serves every channel in its own thread, adds to shared totals
and, when a channel ends, answers on its ``ack`` channel with what it counted.  The
program checks every answer and the totals, and exits 1 if anything is off.

    python examples/fan_in.py
    python examples/fan_in.py --clients 32 --messages 10000 --ipc
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import chan


class Server:
    """Counts what arrives on every channel that clients open."""

    def __init__(self, listener: chan.Listener) -> None:
        self.listener = listener
        self.lock = threading.Lock()
        self.received = 0  # messages, over all clients

    def serve(self) -> None:
        while True:
            try:
                channel = self.listener.accept()
            except chan.ClosedChannelError:  # the listener was closed: we are done
                return
            threading.Thread(target=self.count, args=(channel,), daemon=True).start()

    def count(self, channel: chan.Receiver) -> None:
        received = total = 0
        try:
            hello = channel.recv()  # {"client": name, "ack": Sender}
            for seq in channel:  # until the client closes the channel
                received += 1
                total += seq
        except chan.SessionLost:
            return  # the client went away before it closed the channel: no ack
        finally:
            with self.lock:
                self.received += received
        with hello["ack"] as ack:
            ack.send({"received": received, "sum": total})


def client(endpoint: str, name: str, messages: int) -> dict:
    """Send ``messages`` numbers on a channel of our own session; the server's ack."""
    ack_tx, ack_rx = chan.pipe()
    with chan.connect(endpoint) as session:
        with session.open() as channel:
            channel.send({"client": name, "ack": ack_tx})
            for seq in range(messages):
                channel.send(seq)  # waits whenever the server falls behind (flow control)
        # Leaving the block closed the channel: the server has every message by now.
        with ack_rx:
            return ack_rx.recv(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description="Many clients fanning in to one server.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--messages", type=int, default=1000, help="per client")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:0",
                        help="where the server listens (default: %(default)s, a free port)")
    parser.add_argument("--ipc", action="store_true",
                        help="listen on ipc:// in a temporary directory instead")
    args = parser.parse_args()

    # ZeroMQ leaves ipc socket files behind: put them in a directory that we remove.
    with tempfile.TemporaryDirectory(prefix="cbx-example-") as tmp:
        endpoint = f"ipc://{tmp}/cbx-fan_in.sock" if args.ipc else args.endpoint
        with chan.listen(endpoint) as listener:
            server = Server(listener)
            threading.Thread(target=server.serve, daemon=True).start()
            print(f"{args.clients} clients x {args.messages} messages"
                  f" -> {listener.endpoint}")

            start = time.monotonic()
            names = [f"client-{i}" for i in range(args.clients)]
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                futures = [pool.submit(client, listener.endpoint, name, args.messages)
                           for name in names]
            acks = [future.result() for future in futures]  # raises what a client raised
            elapsed = time.monotonic() - start

    expected = {"received": args.messages, "sum": args.messages * (args.messages - 1) // 2}
    wrong = [(name, ack) for name, ack in zip(names, acks) if ack != expected]
    for name, ack in wrong:
        print(f"{name}: sent {expected}, server acknowledged {ack}")
    sent = args.clients * args.messages
    print(f"server received {server.received} of {sent} messages in {elapsed:.2f} s "
          f"({server.received / elapsed:,.0f} msg/s)")
    if wrong or server.received != sent:
        print("LOST OR WRONG MESSAGES")
        return 1
    print("every client acknowledged: none lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
