import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import VMStream

/// `vmstream`: look inside migration streams, and write sample ones.
@main
struct VMStreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmstream",
        abstract: "Inspect and produce vmsend migration streams.",
        subcommands: [Dump.self, Sample.self])

    /// Maps outcomes to exit codes in one place: 0 success, 1 failure, 2 usage.
    static func main() {
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as StreamError {
            fail(error.description)
        } catch let error as RuntimeError {
            fail(error.message)
        } catch let error as Errno {
            fail(error.description)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            printError(fullMessage(for: error))
            Glibc.exit(code == .failure ? 1 : 2)
        }
    }

    static func fail(_ message: String) -> Never {
        printError("vmstream: \(message)")
        Glibc.exit(1)
    }

    static func printError(_ text: String) {
        _ = try? FileDescriptor.standardError.writeAll(Array((text + "\n").utf8))
    }
}

/// A one-line failure from the executable itself.
struct RuntimeError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}
