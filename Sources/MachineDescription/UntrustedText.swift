/// Text that came from a stream or a peer (machine, device and chunk names, host strings), made safe to print.
///
/// A stream must not be able to forge a line of output or drive the terminal that shows it: every control
/// character, line separator and bidirectional override is shown as an escape (`\n`, `\x1b`, `\u{202e}`), a
/// backslash as `\\`, so the escaped text reads back unambiguously. Empty text is shown as `""`.
public enum UntrustedText {
    /// `text` with everything that is not plainly printable escaped; `""` when empty.
    public static func escape(_ text: String) -> String {
        if text.isEmpty { return "\"\"" }
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            if scalar == "\\" {
                out += "\\\\"
            } else if let escaped = escaped(scalar) {
                out += escaped
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// `'text'`, escaped, with a quote inside shown as `\'` (and empty text as `''`): for names inside a message.
    public static func quote(_ text: String) -> String {
        text.isEmpty ? "''" : "'" + escape(text).replacing("'", with: "\\'") + "'"
    }

    /// Only the characters that would break a line or drive a terminal, backslashes left alone: for a whole message
    /// that may hold text escaped already, so nothing is escaped twice.
    public static func escapeControls(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { escaped($0) != nil }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if let escaped = escaped(scalar) { out += escaped } else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    /// The escape of a scalar that must not reach a terminal as it is, nil for one that may.
    private static func escaped(_ scalar: Unicode.Scalar) -> String? {
        switch scalar.value {
        case 0x0a: return "\\n"
        case 0x0d: return "\\r"
        case 0x09: return "\\t"
        case 0x00: return "\\0"
        case 0x01...0x1f, 0x7f: return "\\x" + hex(scalar.value, digits: 2)
        // C1 controls, line and paragraph separators, zero-width and bidirectional formatting, BOM.
        case 0x80...0x9f, 0x200b...0x200f, 0x2028...0x202e, 0x2060...0x2069, 0xfeff:
            return "\\u{" + hex(scalar.value, digits: 1) + "}"
        default: return nil
        }
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
