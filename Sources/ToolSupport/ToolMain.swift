import ArgumentParser
import MachineDescription
import SystemPackage
import SystemSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The one place where the tools turn outcomes into exit statuses, as zfs does:
/// 0 success, 1 failure, 2 invalid usage. Failures and usage errors are the same one line on stderr,
/// `tool: what is wrong`; help is printed only when asked for (`--help`).
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
                StandardStreams.error(UntrustedText.escapeControls(usageLine(tool: name, command.message(for: error))))
                exit(2)
            }
            // Text from a stream or a peer may be in the message: one line, whatever it holds.
            StandardStreams.error(UntrustedText.escapeControls("\(name): \(error)"))
            exit(1)
        }
    }

    /// ArgumentParser's message (`Missing expected argument '<name>'`, sometimes with a second line of hints) as
    /// one line in the tools' form: `vmrecv: missing expected argument '<name>'`.
    static func usageLine(tool: String, _ message: String) -> String {
        let parts = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: " ") }.filter { !$0.isEmpty }
        var text = parts.joined(separator: " ")
        if text.hasPrefix("Error: ") { text.removeFirst(7) }
        // "Missing value" reads as the middle of a sentence after "tool: "; "VM" or "--flag" keep their case.
        if let first = text.first, first.isUppercase, text.dropFirst().first?.isLowercase == true {
            text = first.lowercased() + text.dropFirst()
        }
        return "\(tool): \(text)"
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set }.reversed().drop { $0 == set }.reversed())
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

/// Runs `body`, turning what it throws into a usage error (exit 2): for values checked in `validate()` with
/// the same one-line messages the libraries give.
public func asUsageError<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ValidationError {
        throw error
    } catch {
        throw ValidationError("\(error)")
    }
}
