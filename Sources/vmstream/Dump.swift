import ArgumentParser
import SystemPackage
import VMStream

struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a stream's BEGIN fields and a summary, verifying every checksum.",
        discussion: "Reads the stream from standard input. -v prints a line per record; -vv adds checksums.")

    @Flag(name: .shortAndLong, help: "Print one line per record; repeat (-vv) to add checksums.")
    var verbose: Int

    func run() throws {
        let reader = try StreamReader(input: .standardInput)
        try StreamDumper(verbosity: verbose) { print($0) }.dump(reader)
    }
}
