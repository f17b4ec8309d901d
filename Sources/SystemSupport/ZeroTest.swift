/// Whether every byte is zero: 64 bytes a step, stopping at the first non-zero word. The one zero test of the
/// project (stream batches, estimates, memory images); a page-aligned 4 KiB page is its common case.
@inlinable
public func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard let base = bytes.baseAddress else { return true }
    let count = bytes.count
    var index = 0
    while index + 64 <= count {
        let a =
            base.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            | base.loadUnaligned(fromByteOffset: index + 8, as: UInt64.self)
            | base.loadUnaligned(fromByteOffset: index + 16, as: UInt64.self)
            | base.loadUnaligned(fromByteOffset: index + 24, as: UInt64.self)
        let b =
            base.loadUnaligned(fromByteOffset: index + 32, as: UInt64.self)
            | base.loadUnaligned(fromByteOffset: index + 40, as: UInt64.self)
            | base.loadUnaligned(fromByteOffset: index + 48, as: UInt64.self)
            | base.loadUnaligned(fromByteOffset: index + 56, as: UInt64.self)
        if a | b != 0 { return false }
        index += 64
    }
    while index < count {
        if base.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
        index += 1
    }
    return true
}

/// Whether the 4 KiB page at `page` is all zeroes.
@inlinable
public func isZeroPage(_ page: UnsafeRawPointer) -> Bool {
    isAllZero(UnsafeRawBufferPointer(start: page, count: pageSize))
}

/// The page size of guests and streams (x86-64): 4 KiB.
public let pageSize = 4096
