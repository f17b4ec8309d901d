#!/usr/bin/env python3
"""Copies standard input to standard output at most RATE bytes per second: a slow link in a pipe.

usage: ratelimit.py RATE      (bytes per second; K, M, G suffixes are powers of 1024, /s optional)
"""
import os
import sys
import time

CHUNK = 64 << 10


def parse_rate(text):
    text = text.removesuffix("/s")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    value = float(text[:-1] if scale > 1 else text)
    if value <= 0:
        raise ValueError(f"rate must be positive: {text}")
    return value * scale


def main(argv):
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    rate = parse_rate(argv[0])
    started, sent = time.monotonic(), 0
    while chunk := os.read(0, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(1, view):]
        sent += len(chunk)
        ahead = sent / rate - (time.monotonic() - started)  # never faster than RATE on average
        if ahead > 0:
            time.sleep(ahead)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, OSError) as error:
        print(f"ratelimit.py: {error}", file=sys.stderr)
        sys.exit(1)
