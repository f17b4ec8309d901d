import Glibc
import MachineDescription
import SystemPackage
import SystemSupport

/// Where machines' sockets and console logs live: `--run-dir`, else `$VMSEND_RUN_DIR`,
/// else `/run/vmsend` for root and `$XDG_RUNTIME_DIR/vmsend` (or `/tmp/vmsend-UID`) otherwise.
public struct RunDirectory: Sendable {
    /// Always absolute, so a daemonised vmrun that changed directory still finds it.
    public var path: String
    public init(path: String) { self.path = RunDirectory.absolute(path) }

    /// Resolves the run directory from a command-line flag and the environment.
    public static func resolve(flag: String?) -> RunDirectory {
        if let flag, !flag.isEmpty { return RunDirectory(path: flag) }
        if let variable = getenv("VMSEND_RUN_DIR"), variable.pointee != 0 {
            return RunDirectory(path: String(cString: variable))
        }
        let uid = getuid()
        if uid == 0 { return RunDirectory(path: "/run/vmsend") }
        if let runtime = getenv("XDG_RUNTIME_DIR"), runtime.pointee != 0 {
            return RunDirectory(path: String(cString: runtime) + "/vmsend")
        }
        return RunDirectory(path: "/tmp/vmsend-\(uid)")
    }

    public func socketPath(for name: String) -> String { path + "/" + name + ".sock" }
    public func consoleLogPath(for name: String) -> String { path + "/" + name + ".console" }
    /// Where a background vmrun's own stderr goes.
    public func processLogPath(for name: String) -> String { path + "/" + name + ".log" }

    /// Creates the directory (mode 0700) if needed and refuses one that another user owns.
    public func create() throws {
        if mkdir(path, 0o700) < 0 && errno != EEXIST {
            let error = errno
            let parent = path.split(separator: "/").dropLast().map { "/" + $0 }.joined()
            if error == EACCES, let missing = FileAccess.missingPermission(parent.isEmpty ? "/" : parent, wanted: W_OK | X_OK) {
                throw ControlError("cannot create run directory \(path): permission denied: \(missing)")
            }
            throw ControlError.system("cannot create run directory \(path)", error)
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw ControlError.system("cannot use run directory \(path)", errno) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw ControlError("run directory \(path) is not a directory") }
        guard info.st_uid == geteuid() else {
            throw ControlError("run directory \(path) belongs to uid \(info.st_uid), not to you; use --run-dir")
        }
    }

    /// `socketNames()` for a listing the user asked for: a directory that is missing or cannot be read is an
    /// error that names it and the permission.
    public func listedSocketNames() throws -> [String] {
        if access(path, F_OK) != 0 {
            throw ControlError("no run directory \(path): no VM has run with it (vmrun creates it; see --run-dir)")
        }
        if let missing = FileAccess.missingPermission(path, wanted: R_OK | X_OK) {
            throw ControlError("cannot list run directory \(path): permission denied: \(missing)")
        }
        return socketNames()
    }

    /// Names of the machines that have a socket here (live or stale), sorted.
    public func socketNames() -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let file = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if file.hasSuffix(".sock") {
                let name = String(file.dropLast(5))
                if MachineName.isValid(name) { names.append(name) }
            }
        }
        return names.sorted()
    }

    /// Shell completion of a VM name: the names in the run directory the command line names (`--run-dir DIR`),
    /// else the default one, that start with `prefix`.
    public static func completeMachineNames(words: [String], prefix: String) -> [String] {
        var flag: String?
        for (index, word) in words.enumerated() {
            if word == "--run-dir", index + 1 < words.count { flag = words[index + 1] }
            if word.hasPrefix("--run-dir=") { flag = String(word.dropFirst("--run-dir=".count)) }
        }
        return resolve(flag: flag).socketNames().filter { $0.hasPrefix(prefix) }
    }

    /// `path` made absolute against the current directory.
    package static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        guard let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return String(cString: cwd) + "/" + path
    }
}

/// Machine names become file names in the run directory, so they are kept to a safe alphabet.
public enum MachineName {
    public static let maximumLength = 64

    public static func isValid(_ name: String) -> Bool {
        guard (1...maximumLength).contains(name.utf8.count), !name.hasPrefix("."), !name.hasPrefix("-") else { return false }
        return name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-")
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
        }
    }

    /// Throws a one-line error for a name that cannot be used.
    public static func validate(_ name: String) throws {
        guard isValid(name) else {
            throw ControlError(
                "invalid VM name '\(name)': use 1 to \(maximumLength) letters, digits, '.', '_' or '-', not starting with '.' or '-'"
            )
        }
    }
}

/// A one-line error from the control layer, ready to print after the program's name.
public struct ControlError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    /// The errno behind the failure, when a system call failed.
    public var code: Errno?

    public init(_ message: String, code: Errno? = nil) {
        self.message = message
        self.code = code
    }

    public var description: String { message }

    static func system(_ what: String, _ code: Int32) -> ControlError {
        ControlError("\(what): \(String(cString: strerror(code)))", code: Errno(rawValue: code))
    }

    static func receiving(_ code: Int32) -> ControlError {
        if code == EAGAIN || code == EWOULDBLOCK {
            return ControlError("timed out waiting for the other side of the control socket", code: Errno(rawValue: code))
        }
        return system("recv", code)
    }
}
