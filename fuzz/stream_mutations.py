"""Mutations of vmstream version 1 streams (man/vmstream.5), for fuzz/mutate-streams.py.

Byte-level classes damage the stream as a bad disk or network would and leave the checksums as they are;
structural classes edit records and frame the stream anew (checksums, the running chain, END's totals), so
that the mutation reaches the rules and the receiver's host checks instead of stopping at a checksum.
"""
import ctypes
import random
import struct

_xxhash = ctypes.CDLL("libxxhash.so.0")
_xxhash.XXH3_64bits_withSeed.restype = ctypes.c_uint64
_xxhash.XXH3_64bits_withSeed.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]

BEGIN, ROUND, PAGES, KERNEL, DEVICE, END, DISK_EXTENTS, DISK_BLOCKS = 1, 2, 3, 4, 5, 6, 7, 8
EVIL_TEXT = [b"", b"\x00", b"a\x00b", b"\x1b[2J\x1b[31mred", b"line\nforged: ok", b"\xe2\x80\xae", b"x" * 300,
             b"\xff\xfe", b"'quoted'", b"\\x1b"]


def xxh3(data, seed=0):
    return _xxhash.XXH3_64bits_withSeed(bytes(data), len(data), seed)


class Stream:
    """A parsed stream: its 32-byte header and its records as [type, flags, payload]."""

    def __init__(self, data):
        self.header = bytes(data[:32])
        self.records = []
        offset = 32
        while offset < len(data):
            rtype, flags, length, _ = struct.unpack_from("<HHIQ", data, offset)
            self.records.append([rtype, flags, bytes(data[offset + 16:offset + 16 + length])])
            offset += 24 + length
        assert self.records[0][0] == BEGIN and self.records[-1][0] == END, "not a whole stream"

    def copy(self):
        other = Stream.__new__(Stream)
        other.header = self.header
        other.records = [list(record) for record in self.records]
        return other

    def frame(self, fix_end=True):
        """The stream's bytes, every checksum and (with `fix_end`) END's totals computed anew."""
        out = bytearray(self.header)
        running = struct.unpack_from("<Q", self.header, 24)[0]
        pages = zero = blocks = zero_blocks = records = 0
        for rtype, flags, payload in self.records:
            if rtype == END and fix_end and len(payload) in (48, 64):
                pause = struct.unpack_from("<Q", payload, 32)[0]
                disks = len(payload) == 64
                payload = struct.pack("<6Q", pages, zero, len(out), records, pause, running)
                if disks:
                    payload += struct.pack("<2Q", blocks, zero_blocks)
            head = struct.pack("<HHI", rtype, flags, len(payload))
            head_sum = xxh3(head)
            record_sum = xxh3(payload, head_sum)
            out += head + struct.pack("<Q", head_sum) + payload + struct.pack("<Q", record_sum)
            running = xxh3(struct.pack("<Q", record_sum), running)
            records += 1
            if rtype in (PAGES, DISK_BLOCKS) and len(payload) >= 16:
                count = struct.unpack_from("<I", payload, 4)[0]
                bitmap = payload[16:16 + (count + 7) // 8]
                zeros = sum(bin(byte).count("1") for byte in bitmap)
                if rtype == PAGES:
                    pages, zero = pages + count, zero + zeros
                else:
                    blocks, zero_blocks = blocks + count, zero_blocks + zeros
        return bytes(out)

    def indices(self, *types):
        return [index for index, record in enumerate(self.records) if record[0] in types]


# BEGIN fields: tag, length, value.
def begin_fields(payload):
    fields, position = [], 0
    while position + 6 <= len(payload):
        tag, size = struct.unpack_from("<HI", payload, position)
        fields.append([tag, payload[position + 6:position + 6 + size]])
        position += 6 + size
    return fields


def begin_payload(fields):
    return b"".join(struct.pack("<HI", tag, len(value)) + value for tag, value in fields)


def text16(value):
    return struct.pack("<H", len(value)) + value


def device_value(version, name, kind, settings):
    return struct.pack("<I", version) + text16(name) + text16(kind) + struct.pack("<H", len(settings)) + b"".join(
        text16(key) + text16(value) for key, value in settings)


def parse_device(value):
    version = struct.unpack_from("<I", value)[0]
    position = 4
    parts = []
    for _ in range(2):
        (size,) = struct.unpack_from("<H", value, position)
        parts.append(value[position + 2:position + 2 + size])
        position += 2 + size
    (count,) = struct.unpack_from("<H", value, position)
    position += 2
    settings = []
    for _ in range(count):
        pair = []
        for _ in range(2):
            (size,) = struct.unpack_from("<H", value, position)
            pair.append(value[position + 2:position + 2 + size])
            position += 2 + size
        settings.append(pair)
    return version, parts[0], parts[1], settings


def _u32(rng):
    return rng.choice([0, 1, 2, 3, 63, 64, 65, 255, 256, 0xFFFFFFFF, rng.randrange(1 << 32)])


def _u64(rng):
    return rng.choice([0, 1, 4096, 4095, 1 << 30, 3 << 30, 4 << 30, 1 << 48, (1 << 64) - 4096, rng.randrange(1 << 64)])


def mutate_begin_field(rng, stream):
    """Edits one BEGIN field (or adds, repeats or drops one) the way a hostile or buggy sender might."""
    fields = begin_fields(stream.records[0][2])
    choice = rng.randrange(10)
    if choice == 0 and fields:
        del fields[rng.randrange(len(fields))]
    elif choice == 1 and fields:
        fields.insert(rng.randrange(len(fields) + 1), list(rng.choice(fields)))
    elif choice == 2:
        tag = rng.choice([7, 22, 40, 0x8001, 0x9000, 0xFFFF])
        fields.insert(rng.randrange(len(fields) + 1), [tag, bytes(rng.randrange(256) for _ in range(rng.randrange(9)))])
    else:
        index = rng.randrange(len(fields))
        tag, value = fields[index]
        if tag in (2, 3, 16, 17, 18, 20, 21, 32):
            value = rng.choice(EVIL_TEXT + [b"aarch64", b"bhyve", b"kvm", b"x86_64"])
        elif tag in (1, 19, 33):
            value = struct.pack("<I", _u32(rng)) if rng.random() < 0.9 else value[:2]
        elif tag == 5:
            value = struct.pack("<Q", _u64(rng))
        elif tag == 6:
            value = bytes([rng.randrange(5)])
        elif tag == 4:
            value = bytes(rng.randrange(256) for _ in range(rng.choice([16, 15, 17])))
        elif tag == 34:
            base, size = struct.unpack_from("<QQ", value)
            name = value[16:]
            which = rng.randrange(3)
            base = _u64(rng) if which == 0 else base
            size = _u64(rng) if which == 1 else size
            name = rng.choice(EVIL_TEXT + [b"highmem"]) if which == 2 else name
            value = struct.pack("<QQ", base, size) + name
        elif tag == 35:
            version, name, kind, settings = parse_device(value)
            which = rng.randrange(6)
            if which == 0:
                version = _u32(rng)
            elif which == 1:
                name = rng.choice(EVIL_TEXT + [b"uart0", b"status0"])
            elif which == 2:
                kind = rng.choice(EVIL_TEXT + [b"uart16550", b"guest-status", b"virtio-net"])
            elif which == 3 and settings:
                settings[rng.randrange(len(settings))][1] = rng.choice(EVIL_TEXT + [b"0x2f8", b"99", b"0", b"18446744073709551615"])
            elif which == 4:
                settings.append([rng.choice([b"color", b"port", b"", b"zz", b"a\x00"]), b"1"])
            elif settings:
                rng.shuffle(settings)
            value = device_value(version, name, kind, settings)
        elif tag == 36 and len(value) == 28:
            words = list(struct.unpack("<7I", value))
            words[rng.randrange(7)] = _u32(rng)
            value = struct.pack("<7I", *words)
        fields[index] = [tag, value]
    stream.records[0][2] = begin_payload(fields)


def mutate_round_or_pages(rng, stream):
    index = rng.choice(stream.indices(ROUND, PAGES, DISK_EXTENTS, DISK_BLOCKS))
    payload = bytearray(stream.records[index][2])
    if stream.records[index][0] in (ROUND, DISK_EXTENTS):
        which = rng.randrange(4)
        if which == 0:
            struct.pack_into("<I", payload, 0, _u32(rng))
        elif which == 1:
            struct.pack_into("<I", payload, 4, _u32(rng))
        elif len(payload) >= 28:
            entry = 8 + 20 * rng.randrange((len(payload) - 8) // 20)
            if which == 2:
                struct.pack_into("<Q", payload, entry + 4, _u64(rng) % (1 << 20))
            else:
                struct.pack_into("<Q", payload, entry + 12, rng.choice([0, 1, 2, 1 << 20]))
    else:
        which = rng.randrange(6)
        if which == 0:
            struct.pack_into("<H", payload, 0, rng.choice([1, 2, 63, 64, 0xFFFF]))
        elif which == 1:
            payload[2] = rng.choice([1, 2, 255])
        elif which == 2:
            payload[3] = rng.randrange(1, 256)
        elif which == 3:
            struct.pack_into("<I", payload, 4, rng.choice([0, 1, 255, 256, 257, 0xFFFFFFFF]))
        elif which == 4:
            struct.pack_into("<Q", payload, 8, _u64(rng) % (1 << 20))
        else:
            position = rng.randrange(16, len(payload))
            payload[position] ^= 1 << rng.randrange(8)
    stream.records[index][2] = bytes(payload)


def mutate_state_chunk(rng, stream):
    index = rng.choice(stream.indices(KERNEL, DEVICE))
    rtype, flags, payload = stream.records[index]
    version = struct.unpack_from("<I", payload)[0]
    (size,) = struct.unpack_from("<H", payload, 4)
    name, data = payload[6:6 + size], bytearray(payload[6 + size:])
    which = rng.randrange(9)
    if which == 0 and data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif which == 1:
        data = data[:rng.randrange(len(data) + 1)]
    elif which == 2:
        data += bytes(rng.randrange(1, 64))
    elif which == 3:
        name = rng.choice(EVIL_TEXT + [b"vcpu0/regs", b"vcpu9/regs", b"vm/bogus", b"uart0", b"status0"])
    elif which == 4:
        version = _u32(rng)
    elif which == 5:
        del stream.records[index]
        return
    elif which == 6:
        stream.records.insert(index, list(stream.records[index]))
        return
    elif which == 7:
        rtype = DEVICE if rtype == KERNEL else KERNEL
    elif data:
        # A field-sized word anywhere in the data: flags, lengths, MSR indices, frequencies.
        offset = rng.randrange(0, max(1, len(data) - 3)) & ~3
        if offset + 4 <= len(data):
            struct.pack_into("<I", data, offset, _u32(rng))
    stream.records[index] = [rtype, flags, struct.pack("<I", version) + text16(name) + bytes(data)]


def mutate_order(rng, stream):
    """Drops, repeats, moves or swaps whole records (END's totals follow)."""
    indices = list(range(len(stream.records)))
    which = rng.randrange(4)
    index = rng.choice(indices)
    if which == 0:
        del stream.records[index]
    elif which == 1:
        stream.records.insert(rng.choice(indices), list(stream.records[index]))
    elif which == 2:
        record = stream.records.pop(index)
        stream.records.insert(rng.randrange(len(stream.records) + 1), record)
    elif index + 1 < len(stream.records):
        stream.records[index], stream.records[index + 1] = stream.records[index + 1], stream.records[index]


def mutate_ignorable(rng, stream):
    """An ignorable record of an unknown type somewhere, or a required one, or unknown flags."""
    which = rng.randrange(3)
    record = [rng.choice([7, 0x7000, 0xFFFF]), 1, bytes(rng.randrange(256) for _ in range(rng.randrange(32)))]
    if which == 1:
        record[1] = 0
    elif which == 2:
        record[1] = rng.choice([2, 3, 0x8001])
    stream.records.insert(rng.randrange(len(stream.records) + 1), record)


def structural(mutator, fix_end=True):
    def mutate(rng, stream):
        edited = stream.copy()
        mutator(rng, edited)
        return edited.frame(fix_end)
    return mutate


def bitflip(rng, stream):
    data = bytearray(stream.frame())
    for _ in range(rng.randrange(1, 5)):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(rng, stream):
    data = stream.frame()
    return data[:rng.randrange(len(data))]


def splice(rng, stream):
    data = bytearray(stream.frame())
    position = rng.randrange(len(data))
    if rng.random() < 0.5:
        del data[position:position + rng.randrange(1, 65)]
    else:
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 65)))
    return bytes(data)


def end_record(rng, stream):
    """END's fields changed (totals, pause time, chain), or bytes after END (a warning, not a refusal)."""
    edited = stream.copy()
    if rng.random() < 0.4:
        return edited.frame() + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
    data = bytearray(edited.frame())
    size = len(edited.records[-1][2])
    end = len(data) - 8 - size
    field = rng.randrange(size // 8)
    struct.pack_into("<Q", data, end + 8 * field, _u64(rng))
    edited = Stream(bytes(data))
    return edited.frame(fix_end=False)


CLASSES = {
    "bitflip": bitflip,
    "truncate": truncate,
    "splice": splice,
    "record-order": structural(mutate_order),
    "begin-field": structural(mutate_begin_field),
    "round-pages": structural(mutate_round_or_pages),
    "state-chunk": structural(mutate_state_chunk),
    "end-record": end_record,
    "ignorable-record": structural(mutate_ignorable),
}


def mutate(class_name, rng: random.Random, stream):
    return CLASSES[class_name](rng, stream)
