"""Bulk data through a stream reuses freed memory instead of faulting it in anew.

Every 64 KiB chunk allocates and frees buffers of its size on both sides; with glibc's
default trim threshold each chunk used to fault its pages back in (about 15 minor faults
per chunk for the writer over tcp, 7 for the reader), which cost more CPU than the copy
itself.  See chan/_malloc.py.
"""

from __future__ import annotations

import resource

import pytest

import chan

CHUNKS = 3000
WARMUP = 64  # chunks read before counting: the heap grows once, then stays
CHUNK_SIZE = 1 << 16


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.timeout(60)
def test_streamed_chunks_do_not_fault_their_memory_in_anew(children) -> None:
    with chan.listen("tcp://127.0.0.1:0") as listener:
        writer = children.start("stream_writer.py", listener.endpoint, CHUNKS)
        stream = listener.accept(timeout=10).recv(timeout=10)["stream"]
        got = 0
        while got < WARMUP * CHUNK_SIZE:
            got += len(stream.read(CHUNK_SIZE, timeout=10))
        before = _minor_faults()
        while piece := stream.read(CHUNK_SIZE, timeout=10):
            got += len(piece)
        reader_faults = (_minor_faults() - before) / (got / CHUNK_SIZE - WARMUP)
        writer_faults = float(writer.expect("FAULTS", 30))
        assert got == (WARMUP + CHUNKS) * CHUNK_SIZE
        # (a chunk is 16 pages: faulting it in anew shows as >= 7 per chunk)
        assert writer_faults < 1, f"the writer faulted {writer_faults:.1f} pages per chunk"
        assert reader_faults < 1, f"the reader faulted {reader_faults:.1f} pages per chunk"
        assert writer.proc.wait(30) == 0, writer.stderr()
