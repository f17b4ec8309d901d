#!/usr/bin/env python3
"""Writes a benchmark guest-memory image: 64 KiB runs, half zero, a quarter text-like, a quarter random."""
import os
import random
import sys

path, size_mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
words = [b"migrate ", b"page ", b"round ", b"vcpu ", b"dirty ", b"stream ", b"memory ", b"return ",
         b"if (x) ", b"{\n", b"}\n", b"0x1000 ", b"mov rax, ", b"struct ", b"kvm ", b"let "]
run = 64 << 10
# A pool of text-like runs, as code and text pages compress.
text = [b"".join(rng.choice(words) for _ in range(run // 4))[:run] for _ in range(64)]
zero = bytes(run)
with open(path, "wb") as out:
    for index in range((size_mib << 20) // run):
        kind = rng.randrange(4)
        out.write(zero if kind < 2 else text[rng.randrange(64)] if kind == 2 else os.urandom(run))
