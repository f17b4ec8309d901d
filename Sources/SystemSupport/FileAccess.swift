import Glibc

/// Which permission a path lacks and who has it, for the one-line errors of a tool run without it:
/// `needs write permission on /run/vmsend/a.sock (owner root, group root, mode 0600)`.
public enum FileAccess {
    /// `owner root, group kvm, mode 0660`, or nil when the path cannot be looked at.
    public static func ownership(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let mode = String(info.st_mode & 0o7777, radix: 8)
        return "owner \(userName(info.st_uid)), group \(groupName(info.st_gid)), mode "
            + String(repeating: "0", count: max(0, 4 - mode.count)) + mode
    }

    /// What this process lacks to use `path` as `wanted` asks (R_OK, W_OK, X_OK or-ed): the first directory on
    /// the way it cannot search, else `path` itself; nil when nothing is missing (or the path does not exist).
    public static func missingPermission(_ path: String, wanted: Int32) -> String? {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/").dropLast() {
            prefix += "/" + component
            if access(prefix, X_OK) != 0 && errno == EACCES { return describe(prefix, X_OK) }
        }
        if access(path, wanted) != 0 && errno == EACCES { return describe(path, wanted) }
        return nil
    }

    /// `needs read and write permission on PATH (owner ..., group ..., mode ...)`.
    static func describe(_ path: String, _ wanted: Int32) -> String {
        let names = [(R_OK, "read"), (W_OK, "write"), (X_OK, "search")].filter { wanted & $0.0 != 0 }.map(\.1)
        let kinds = names.count > 1 ? names.dropLast().joined(separator: ", ") + " and " + names.last! : names.joined()
        return "needs \(kinds) permission on \(path)" + (ownership(path).map { " (\($0))" } ?? "")
    }

    private static func userName(_ uid: uid_t) -> String {
        guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return "uid \(uid)" }
        return String(cString: name)
    }

    private static func groupName(_ gid: gid_t) -> String {
        guard let entry = getgrgid(gid), let name = entry.pointee.gr_name else { return "gid \(gid)" }
        return String(cString: name)
    }
}
