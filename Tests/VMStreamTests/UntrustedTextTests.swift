import MachineDescription
import Testing

/// Text from a stream reaches terminals and logs escaped: it can neither add a line nor drive the terminal.
@Suite struct UntrustedTextTests {
    @Test func controlsSeparatorsAndOverridesAreEscaped() {
        #expect(UntrustedText.escape("demo") == "demo")
        #expect(UntrustedText.escape("") == "\"\"")
        #expect(UntrustedText.escape("a\nb\r\tc\u{0}") == #"a\nb\r\tc\0"#)
        #expect(UntrustedText.escape("\u{1b}[31mred\u{7f}") == #"\x1b[31mred\x7f"#)
        #expect(
            UntrustedText.escape("\u{85}\u{2028}\u{202e}evil\u{200b}\u{feff}") == #"\u{85}\u{2028}\u{202e}evil\u{200b}\u{feff}"#)
        #expect(UntrustedText.escape(#"back\slash"#) == #"back\\slash"#, "a backslash is escaped, so escapes read back")
        #expect(UntrustedText.escape("größe ✓") == "größe ✓", "printable text beyond ASCII stays as it is")
    }

    @Test func quotedNamesShowQuotesAndEmptiness() {
        #expect(UntrustedText.quote("uart0") == "'uart0'")
        #expect(UntrustedText.quote("") == "''")
        #expect(UntrustedText.quote("it's\n") == #"'it\'s\n'"#)
    }

    @Test func aWholeLineKeepsItsBackslashesAndLosesItsControls() {
        #expect(UntrustedText.escapeControls(#"vmrecv: name 'a\nb' refused"#) == #"vmrecv: name 'a\nb' refused"#)
        #expect(UntrustedText.escapeControls("vmrecv: a\nb\u{1b}") == #"vmrecv: a\nb\x1b"#)
    }
}
