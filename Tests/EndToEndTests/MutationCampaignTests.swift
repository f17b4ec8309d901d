import Foundation
import Glibc
import Testing

extension MigrationEndToEndTests {
    /// A short run of fuzz/mutate-streams.py, so that the campaign keeps working as the tools change; the full run
    /// (1,000 streams) and its figures are in fuzz/RESULTS-mutation.md.
    @Suite struct MutationCampaignTests {
        @Test func aShortCampaignFindsNoDisagreementCrashHangOrLeftover() throws {
            try VMFixture.requireMachine()
            guard access("/usr/bin/python3", X_OK) == 0 else { try Test.cancel("needs /usr/bin/python3") }
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            let script = root.appendingPathComponent("fuzz/mutate-streams.py").path
            let result = try runProcess(
                "/usr/bin/python3", [script, "27", "--seed", "11", "--jobs", "1", "--build", Products.directory],
                timeout: .seconds(600))
            #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
            #expect(result.standardOutput.contains("| **all** | **27** |"), "\(result.standardOutput)")
        }
    }
}
