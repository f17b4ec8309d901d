import ArgumentParser
import MachineDescription
import SystemPackage
import ToolSupport
import VMStream

#if canImport(Glibc)
    import Glibc
#endif

/// `vmstream`: look inside migration streams, and write sample ones.
struct VMStreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmstream",
        abstract: "Inspect and produce vmsend migration streams.",
        version: Release.versionLine(tool: "vmstream"),
        subcommands: [Dump.self, Sample.self])

    func run() throws { throw ValidationError("missing subcommand: dump or sample") }
}
