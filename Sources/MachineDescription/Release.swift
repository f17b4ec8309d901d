/// The release of the tools and the stream format they write and read: what every `--version` prints and
/// what a stream's BEGIN records, kept in one place so the two cannot disagree.
public enum Release {
    public static let version = "0.1.0"
    /// The one stream format version this release writes and reads (man/vmstream.5).
    public static let streamFormatVersion: UInt32 = 1

    /// `vmsend 0.1.0 (stream format 1)`.
    public static func versionLine(tool: String) -> String {
        "\(tool) \(version) (stream format \(streamFormatVersion))"
    }
}
