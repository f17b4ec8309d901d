import Foundation
import Testing

/// scripts/decode-stream.py was written from man/vmstream.5 alone; it must accept what the writer writes.
@Suite struct SpecificationTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test(
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs /usr/bin/python3"),
        arguments: [
            ("golden-v1.vms", "ok: 16 records, 32 pages (16 zero), running checksum verified\n"),
            ("golden-v1-disk.vms", "ok: 21 records, 32 pages (16 zero), 10 disk blocks (5 zero), running checksum verified\n"),
        ])
    func independentDecoderAcceptsTheGoldenStreams(file: String, summary: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [Self.root.appendingPathComponent("scripts/decode-stream.py").path]
        process.standardInput = try FileHandle(
            forReadingFrom: Self.root.appendingPathComponent("Tests/VMStreamTests/Resources/" + file))
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(text.hasSuffix(summary), "\(text)")
    }
}
