#!/usr/bin/env python3
"""An independent decoder of vmstream format version 1, written from man/vmstream.5 alone.

It parses every record and verifies every checksum, to show the page is a sufficient
specification. XXH3-64 and LZ4 come from the system's libxxhash and liblz4 through ctypes.
Usage: scripts/decode-stream.py < stream    (prints one line per record; exit 1 on error)
"""
import ctypes
import struct
import sys

xxhash = ctypes.CDLL("libxxhash.so.0")
xxhash.XXH3_64bits_withSeed.restype = ctypes.c_uint64
xxhash.XXH3_64bits_withSeed.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]
lz4 = ctypes.CDLL("liblz4.so.1")
lz4.LZ4_decompress_safe.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]

NAMES = {1: "BEGIN", 2: "ROUND", 3: "PAGES", 4: "KERNEL STATE", 5: "DEVICE STATE", 6: "END",
         7: "DISK EXTENTS", 8: "DISK BLOCKS"}
DISKS = 1  # must-understand feature bit 0


def xxh3(data, seed=0):
    return xxhash.XXH3_64bits_withSeed(bytes(data), len(data), seed)


def fail(message):
    print("decode-stream: " + message, file=sys.stderr)
    sys.exit(1)


def main():
    data = sys.stdin.buffer.read()
    if data[:8] != b"VMSTREAM":
        fail("bad magic")
    version, features, _flags, reserved, checksum = struct.unpack_from("<IIIIQ", data, 8)
    if xxh3(data[:24]) != checksum:
        fail("header checksum mismatch")
    if version != 1 or features & ~DISKS or reserved != 0:
        fail("unsupported header")
    running, offset, number = checksum, 32, 0
    pages = zero = blocks = zero_blocks = 0
    segments, disks = [], []
    last_round, state_started = None, False
    while True:
        if offset == len(data):
            fail("truncated before END")
        number += 1
        rtype, flags, length, header_checksum = struct.unpack_from("<HHIQ", data, offset)
        if xxh3(data[offset:offset + 8]) != header_checksum:
            fail("header checksum mismatch in record %d" % number)
        if length > 4194304 or offset + 24 + length > len(data):
            fail("bad length in record %d" % number)
        payload = data[offset + 16:offset + 16 + length]
        (stored,) = struct.unpack_from("<Q", data, offset + 16 + length)
        if xxh3(payload, header_checksum) != stored:
            fail("checksum mismatch in record %d" % number)
        name = NAMES.get(rtype, "type %d" % rtype)
        detail = ""
        # STREAM RULES: BEGIN first; rounds numbered one after the other (a continuation or a round's disk part
        # keeps the number); every round before the state; at least one round before state and END.
        if (number == 1) != (rtype == 1):
            fail("record %d: BEGIN must be the first record, and only it" % number)
        if rtype in (2, 7):
            (round_number,) = struct.unpack_from("<I", payload)
            if state_started:
                fail("record %d: a round after the state" % number)
            if last_round is not None and round_number not in (last_round, last_round + 1):
                fail("record %d: round %d follows round %d" % (number, round_number, last_round))
            last_round = round_number
        if rtype in (4, 5, 6) and last_round is None:
            fail("record %d: state or END before any round" % number)
        state_started = state_started or rtype in (4, 5)
        if rtype == 1:
            position, fields = 0, []
            while position < length:
                tag, size = struct.unpack_from("<HI", payload, position)
                value = payload[position + 6:position + 6 + size]
                position += 6 + size
                if tag == 34:
                    base, seg_size = struct.unpack_from("<QQ", value)
                    segments.append(seg_size // 4096)
                    fields.append("segment %s base %#x size %d" % (value[16:].decode(), base, seg_size))
                elif tag == 37:
                    disk_size, allocated, disk_flags, name_length = struct.unpack_from("<QQBH", value)
                    disks.append(disk_size // 4096)
                    fields.append("disk %s size %d allocated %d flags %d" % (
                        value[19:19 + name_length].decode(), disk_size, allocated, disk_flags))
                elif tag in (2, 3, 16, 17, 18, 20, 21, 32):
                    if b"\0" in value:
                        fail("text with NUL in BEGIN")
                    fields.append(value.decode())
            if bool(disks) != bool(features & DISKS):
                fail("disks in BEGIN and the DISKS feature disagree")
            detail = ", ".join(fields)
        elif rtype in (2, 7):
            round_number, count = struct.unpack_from("<II", payload)
            detail = "round %d, %d ranges" % (round_number, count)
        elif rtype in (3, 8):
            segment, encoding, _reserved, count, first = struct.unpack_from("<HBBIQ", payload)
            bitmap = payload[16:16 + (count + 7) // 8]
            zeros = sum(bin(b).count("1") for b in bitmap)
            body = payload[16 + len(bitmap):]
            data_bytes = (count - zeros) * 4096
            if encoding == 1:
                out = ctypes.create_string_buffer(data_bytes)
                if lz4.LZ4_decompress_safe(body, out, len(body), data_bytes) != data_bytes:
                    fail("bad LZ4 data in record %d" % number)
            elif len(body) != data_bytes:
                fail("bad raw length in record %d" % number)
            area = segments if rtype == 3 else disks
            if first + count > area[segment]:
                fail("pages or blocks outside their area in record %d" % number)
            if rtype == 3:
                pages, zero = pages + count, zero + zeros
            else:
                blocks, zero_blocks = blocks + count, zero_blocks + zeros
            detail = "%s %d units %d+%d zero %d %s" % (
                "segment" if rtype == 3 else "disk", segment, first, count, zeros, "lz4" if encoding else "raw")
        elif rtype in (4, 5):
            chunk_version, name_length = struct.unpack_from("<IH", payload)
            detail = "%s v%d, %d bytes" % (payload[6:6 + name_length].decode(), chunk_version, length - 6 - name_length)
        elif rtype == 6:
            if len(payload) != (64 if features & DISKS else 48):
                fail("END has the wrong length")
            t_pages, t_zero, t_bytes, t_records, _pause, t_running = struct.unpack_from("<6Q", payload)
            if (t_pages, t_zero, t_bytes, t_records, t_running) != (pages, zero, offset, number - 1, running):
                fail("END totals or running checksum disagree")
            if features & DISKS and struct.unpack_from("<2Q", payload, 48) != (blocks, zero_blocks):
                fail("END disk totals disagree")
        print("%d %s at %d: %s" % (number, name, offset, detail))
        running = xxh3(struct.pack("<Q", stored), running)
        offset += 24 + length
        if rtype == 6:
            break
    # Reading stops at END; what follows is not the stream's.
    if offset != len(data):
        print("warning: %d bytes after END ignored" % (len(data) - offset), file=sys.stderr)
    extra = ", %d disk blocks (%d zero)" % (blocks, zero_blocks) if features & DISKS else ""
    print("ok: %d records, %d pages (%d zero)%s, running checksum verified" % (number, pages, zero, extra))


main()
