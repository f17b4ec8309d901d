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
    /// Writes one line to stderr, unbuffered, whole, on a line of its own even while a progress bar is shown.
    public static func error(_ line: String) { StandardError.line(line) }

    public static var outputIsRegularFile: Bool { FileDescriptor.standardOutput.isRegularFile }
}
