#!/usr/bin/env python3
"""Writes the standard benchmark memory image and prints its sha256.

The image is a repeating pattern of 2 MiB regions: zero, zero, real binaries, random.
- zero regions are holes (the file is sparse), so they cost nothing on disk;
- binary regions are consecutive bytes of the ELF files under --binary-root, taken in
  byte-wise sorted path order (the sequence wraps around when the files run out);
- random regions are SHAKE-256 of (seed, region index): fixed by the seed, the same on any
  machine and any Python version.
The same machine with the same installed packages therefore gives the same bytes; the printed
sha256 is what to compare. Memory use is one region at a time.
"""
import argparse
import hashlib
import os
import stat
import sys

REGION = 2 << 20
PAGE = 4096
PATTERN = ("zero", "zero", "binary", "random")
ZERO_PAGE = bytes(PAGE)


def parse_size(text):
    """Parses 2G, 512M, 4096K or plain bytes; the size must be a whole number of regions."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        value = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 2G, 512M)")
    if value <= 0 or value % REGION:
        raise argparse.ArgumentTypeError(f"size must be a positive multiple of 2 MiB, got {value}")
    return value


def elf_files(root):
    """Regular ELF files under root, sorted by path bytes (symlinks skipped, so no duplicates)."""
    found = []
    for directory, dirs, files in os.walk(os.fsencode(root)):
        dirs.sort()
        for name in files:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode) or info.st_size < PAGE:
                    continue
                with open(path, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        found.append(path)
            except OSError:
                continue
    found.sort()
    return found


class BinaryBytes:
    """Consecutive bytes of a list of files, wrapping around at the end."""

    def __init__(self, paths):
        if not paths:
            raise SystemExit("make-image: no ELF files found for the binary regions (try --binary-root)")
        self.paths, self.index, self.file = paths, 0, None

    def take(self, count):
        parts, missing, empty_in_a_row = [], count, 0
        while missing:
            if self.file is None:
                try:
                    self.file = open(self.paths[self.index], "rb")
                except OSError:
                    self.file = open(os.devnull, "rb")
                self.index = (self.index + 1) % len(self.paths)
            chunk = self.file.read(missing)
            if not chunk:
                self.file.close()
                self.file = None
                empty_in_a_row += 1
                if empty_in_a_row > len(self.paths):
                    raise SystemExit("make-image: the binary files are unreadable or empty")
                continue
            empty_in_a_row = 0
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)


def main():
    parser = argparse.ArgumentParser(description="Write the standard benchmark memory image.")
    parser.add_argument("output", help="image file to write (replaced)")
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"), help="image size (default 2G)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random regions (default 1)")
    parser.add_argument("--binary-root", default="/usr/lib", help="where the binary regions come from")
    args = parser.parse_args()

    binaries = BinaryBytes(elf_files(args.binary_root))
    digest = hashlib.sha256()
    zero_region = bytes(REGION)
    nonzero_pages = 0
    counts = dict.fromkeys(PATTERN, 0)
    tmp = args.output + ".part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, args.size)
        for region in range(args.size // REGION):
            kind = PATTERN[region % len(PATTERN)]
            counts[kind] += 1
            if kind == "zero":
                digest.update(zero_region)
                continue
            if kind == "binary":
                data = binaries.take(REGION)
            else:
                data = hashlib.shake_256(b"vmsend-bench seed=%d region=%d" % (args.seed, region)).digest(REGION)
            nonzero_pages += sum(1 for at in range(0, REGION, PAGE) if data[at:at + PAGE] != ZERO_PAGE)
            os.pwrite(fd, data, region * REGION)
            digest.update(data)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, args.output)
    total_pages = args.size // PAGE
    print(f"image {args.output}: {args.size} bytes, regions zero={counts['zero']} "
          f"binary={counts['binary']} random={counts['random']}, seed {args.seed}")
    print(f"non-zero 4 KiB pages {nonzero_pages} of {total_pages} ({nonzero_pages * PAGE} bytes)")
    print(f"sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as error:
        print(f"make-image: {error}", file=sys.stderr)
        sys.exit(1)
