import CFuzzer
@_spi(Fuzzing) import VMStream

/// libFuzzer's entry point: any input must be read to a clean end or a StreamError, never a crash.
/// Each input is read as given, and again with its checksums repaired so mutations reach the parsers.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamReader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    read(input)
    read(ChecksumRepair.repair(input))
    return 0
}

func read(_ bytes: [UInt8]) {
    let reader = StreamReader(bytes: bytes)
    do {
        while try reader.next(into: DiscardingPageSink()) != nil {}
    } catch is StreamError {
    } catch {
        fatalError("reader threw something other than a StreamError: \(error)")
    }
}

/// SwiftPM links an executable's entry point as `<module>_main`; hand control to libFuzzer from there.
@_cdecl("FuzzStreamReader_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzStreamReader(data!, size) }
}
