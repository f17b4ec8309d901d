import Foundation
import Synchronization
import Testing

/// The `vmstream` executable end to end: exit statuses and one-line errors.
@Suite struct CommandTests {
    static let binary = SpecificationTests.root.appendingPathComponent(".build/debug/vmstream").path
    static let available = FileManager.default.isExecutableFile(atPath: binary)

    /// Runs vmstream with `arguments` and `input` on stdin; returns status, stdout, stderr.
    func run(_ arguments: [String], input: Data = Data()) throws -> (Int32, String, String) {
        let (status, output, error) = try runBinary(arguments, input: input)
        return (status, String(decoding: output, as: UTF8.self), error)
    }

    func runBinary(_ arguments: [String], input: Data) throws -> (Int32, Data, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        let stdin = Pipe()
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        let writer = Thread {
            try? stdin.fileHandleForWriting.write(contentsOf: input)
            try? stdin.fileHandleForWriting.close()
        }
        writer.start()
        let errorData = Mutex(Data())
        let errorDone = DispatchSemaphore(value: 0)
        let errorReader = Thread {
            errorData.withLock { $0 = stderr.fileHandleForReading.readDataToEndOfFile() }
            errorDone.signal()
        }
        errorReader.start()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        errorDone.wait()
        return (process.terminationStatus, output, errorData.withLock { String(decoding: $0, as: UTF8.self) })
    }

    @Test(.enabled(if: available, "needs swift build first"))
    func sampleThroughDumpAndItsFailures() throws {
        let (status, stream, _) = try runBinary(["sample", "--size", "1M", "--compress", "lz4"], input: Data())
        #expect(status == 0)
        let (dumpStatus, summary, _) = try run(["dump"], input: stream)
        #expect(dumpStatus == 0)
        #expect(summary.contains("\tPages = 272 (zero pages elided = "))
        #expect(summary.contains("\tTotal stream length = \(stream.count) bytes"))
        let (sampleStatus, _, _) = try run(["sample", "--size", "7"])
        #expect(sampleStatus == 2)
        let (usageStatus, _, usage) = try run(["dump", "--bogus"])
        #expect(usageStatus == 2)
        #expect(usage == "vmstream: unknown option '--bogus'\n", "one line in the tools' form, no help")
        let (bareStatus, _, bare) = try run([])
        #expect(bareStatus == 2)
        #expect(bare == "vmstream: missing subcommand: dump or sample\n")
    }

    @Test(.enabled(if: available, "needs swift build first"))
    func dumpVerifiesAndReportsOneLine() throws {
        let golden = try Data(
            contentsOf: SpecificationTests.root.appendingPathComponent("Tests/VMStreamTests/Resources/golden-v1.vms"))
        let (status, output, _) = try run(["dump", "-v"], input: golden)
        #expect(status == 0)
        #expect(output.contains("record 16 END offset 53624"))
        var damaged = golden
        damaged[1000] ^= 0x01
        let (badStatus, _, error) = try run(["dump"], input: damaged)
        #expect(badStatus == 1)
        #expect(error == "vmstream: checksum mismatch in record 3 (PAGES) at byte 488\n")
        let (cutStatus, _, cut) = try run(["dump"], input: golden.prefix(2000))
        #expect(cutStatus == 1)
        #expect(cut == "vmstream: stream truncated at byte 2000 (inside record 3)\n")
    }
}
