import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import ToolSupport
import VMStream

/// `vmstream`: look inside migration streams, and write sample ones.
struct VMStreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmstream",
        abstract: "Inspect and produce vmsend migration streams.",
        subcommands: [Dump.self, Sample.self])
}
