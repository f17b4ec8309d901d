import ArgumentParser
import SystemPackage
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The one place where the tools turn outcomes into exit statuses, as zfs does:
/// 0 success, 1 failure (one line on stderr: `tool: what failed`), 2 invalid usage.
public enum ToolMain {
    /// Parses `arguments` (the process's own by default), runs the command and exits.
    public static func run<Command: ParsableCommand>(_ command: Command.Type, arguments: [String]? = nil) -> Never {
        let name = command.configuration.commandName ?? "\(command)"
        do {
            var parsed = try command.parseAsRoot(arguments)
            try parsed.run()
            exit(0)
        } catch let exitCode as ExitCode {
            exit(exitCode.rawValue)
        } catch {
            let code = command.exitCode(for: error)
            if code == .success {
                print(command.fullMessage(for: error))
                exit(0)
            }
            if code == .validationFailure {
                StandardStreams.error(command.fullMessage(for: error))
                exit(2)
            }
            StandardStreams.error("\(name): \(error)")
            exit(1)
        }
    }
}

/// A failure of the executable itself, worded as the line the user sees after the tool's name.
public struct ToolError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}

/// Lines on stderr, and what kind of file stdout is.
public enum StandardStreams {
    /// Writes one line to stderr, unbuffered, whole.
    public static func error(_ line: String) { errorText(line + "\n") }

    /// Writes text to stderr as it is (progress bars redraw a line with `\r`).
    public static func errorText(_ text: String) {
        try? FileDescriptor.standardError.writeFully(Array(text.utf8), what: "standard error")
    }

    public static var outputIsRegularFile: Bool { FileDescriptor.standardOutput.isRegularFile }
}
