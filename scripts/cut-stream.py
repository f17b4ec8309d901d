#!/usr/bin/env python3
"""Passes a migration stream through until a chosen record, then stops, as a transport cut there would.

Usage: scripts/cut-stream.py TYPE N [BYTES]
       scripts/cut-stream.py BYTES N     (the first N bytes, as head -c)
       scripts/cut-stream.py ALL         (everything: counts the bytes)
  Copies stdin to stdout up to the start of the Nth record (counting from 1) of TYPE (BEGIN, ROUND, PAGES,
  KERNEL, DEVICE, END, RESUME, DISK-EXTENTS, DISK-BLOCKS), plus BYTES of that record (default 0), then exits 0,
  closing the pipe on the sender, and says on stderr how many bytes it passed: "cut-stream: N bytes". A stream that ends first is copied whole. It reads only the framing (record
  types and lengths, man/vmstream.5), so it cuts live streams, whose layout nobody knows beforehand, where a test
  wants them cut: in a later round, in the state, just before END.
"""
import struct
import sys

TYPES = {"BEGIN": 1, "ROUND": 2, "PAGES": 3, "KERNEL": 4, "DEVICE": 5, "END": 6, "DISK-EXTENTS": 7,
         "DISK-BLOCKS": 8, "RESUME": 9}
HEADER = 32
RECORD_HEADER = 16
TRAILER = 8


def main():
    special = sys.argv[1:2] == ["ALL"] and len(sys.argv) == 2 or sys.argv[1:2] == ["BYTES"] and len(sys.argv) == 3
    if not special and (len(sys.argv) not in (3, 4) or sys.argv[1] not in TYPES):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    passed = 0

    def write(data):
        nonlocal passed
        sink.write(data)
        passed += len(data)

    def done():
        sink.flush()
        print(f"cut-stream: {passed} bytes", file=sys.stderr)
        sys.exit(0)

    def copy(length):
        while length > 0:
            piece = source.read(min(length, 1 << 20))
            if not piece:
                done()
            write(piece)
            length -= len(piece)

    if sys.argv[1] == "ALL":
        copy(1 << 62)
    if sys.argv[1] == "BYTES":
        copy(int(sys.argv[2]))
        done()
    wanted, count = TYPES[sys.argv[1]], int(sys.argv[2])
    extra = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    copy(HEADER)
    seen = 0
    while True:
        header = source.read(RECORD_HEADER)
        if len(header) < RECORD_HEADER:
            write(header)
            break
        kind, _flags, length = struct.unpack_from("<HHI", header)
        if kind == wanted:
            seen += 1
            if seen == count:
                write(header[:extra])
                copy(max(0, extra - RECORD_HEADER))
                break
        write(header)
        copy(length + TRAILER)
    done()


if __name__ == "__main__":
    main()
