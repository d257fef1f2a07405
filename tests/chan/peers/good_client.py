"""A well-behaved chan client doing request/reply with server.py until told to stop.

    good_client.py ENDPOINT SEED

A thread does round trips on one channel: ``{"verb": "echo", "x": value, "ret": Sender}``,
checks the answer and that ``ret`` then ends cleanly; it prints ``UP`` after the first.
Commands on stdin, one a line:

- ``progress``: prints ``PROGRESS <round trips> <slowest ms> <first error or ->``;
- ``stop`` (or EOF): finishes the round trip under way, closes the channel and the
  session, prints ``RESULT <round trips> <slowest ms> <first error or ->`` and exits
  (status 0 if there was no error, 1 otherwise).
"""

import os
import random
import sys
import threading
import time

import chan

from _common import say

done = 0
slowest = 0.0
errors: list = []
halt = threading.Event()
finished = threading.Event()


def work(endpoint: str, seed: int) -> None:
    global done, slowest
    rng = random.Random(seed)
    try:
        with chan.connect(endpoint, timeout=10) as session:
            tx = session.open()
            while not halt.is_set():
                value = [done, rng.randbytes(rng.randint(0, 200)), {"n": rng.random()}]
                ret_tx, ret_rx = chan.pipe()
                began = time.monotonic()
                tx.send({"verb": "echo", "x": value, "ret": ret_tx}, timeout=15)
                answer = ret_rx.recv(timeout=15)
                if answer != value:
                    raise AssertionError(f"wrong answer {answer!r:.100} for {value!r:.100}")
                try:
                    ret_rx.recv(timeout=15)
                    raise AssertionError("the reply channel was not closed")
                except chan.EndOfChannel:
                    pass
                slowest = max(slowest, time.monotonic() - began)
                done += 1
                if done == 1:
                    say("UP")
            tx.close(timeout=15)
    except BaseException as exc:
        errors.append(exc)
    finally:
        finished.set()


def report(word: str) -> None:
    error = repr(errors[0]).replace("\n", " ") if errors else "-"
    say(word, done, int(slowest * 1000), error)


def main() -> None:
    worker = threading.Thread(target=work, args=(sys.argv[1], int(sys.argv[2])), daemon=True)
    worker.start()
    for line in sys.stdin:
        if line.strip() == "progress":
            report("PROGRESS")
        elif line.strip() == "stop":
            break
    else:
        os._exit(0)  # EOF: the test process is gone
    halt.set()
    if not finished.wait(30):
        errors.append(TimeoutError("the last round trip hangs"))
    report("RESULT")
    sys.stdout.flush()
    os._exit(1 if errors else 0)


if __name__ == "__main__":
    main()
