import Glibc
import MachineDescription
import Testing
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

extension MigrationEndToEndTests {
    /// Live migration of guests that keep writing memory while they are sent.
    @Suite struct LiveTests {
        /// Live-migrates `source` to `copy` with a shell `pipeline` built from the send and receive commands,
        /// then checks the copy continues with every check OK and the source stays paused. Returns vmsend's stderr.
        @discardableResult
        func migrateLive(
            _ fixture: VMFixture, from source: String, to copy: String, options: [String] = [],
            environment: String = "", expectChecksOK: Bool = true,
            pipeline: (_ send: String, _ receive: String) -> String = { "\($0) | \($1)" },
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws -> String {
            let send = environment + fixture.command("vmsend", options + [source])
            let receive = fixture.command("vmrecv", [copy])
            let result = try runShell(pipeline(send, receive))
            #expect(result.status == 0, "\(source) -> \(copy): \(result.standardError)", sourceLocation: sourceLocation)
            let paused = try fixture.status(source)
            #expect(paused.state == .migrated, sourceLocation: sourceLocation)
            if expectChecksOK {
                try fixture.expectContinues(copy, from: paused, sourceLocation: sourceLocation)
            }
            return result.standardError
        }

        /// A 2-vCPU guest dirtying flat out is migrated 20 times in a row, each copy under a new name;
        /// every copy must pass new checks. One lost or stale page makes its checks fail.
        @Test func noPageIsLostInTwentyLiveMigrations() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("vm0", memory: "128M", workingSet: "16M", extra: ["--guest-dirty-rate", "0"])
            let start = ContinuousClock.now
            var rounds: [Int] = []
            for index in 1...20 {
                let stderr = try migrateLive(fixture, from: "vm\(index - 1)", to: "vm\(index)", options: ["-P"])
                rounds.append(stderr.split(separator: "\n").filter { $0.hasPrefix("round\t") || $0.hasPrefix("final\t") }.count)
                #expect(try fixture.vmctl(["destroy", "vm\(index - 1)"]).status == 0)
            }
            print(
                "20 live migrations of a guest dirtying flat out: \(ContinuousClock.now - start), rounds per migration \(rounds)")
            #expect(fixture.sockets() == ["vm20.sock"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// The same test with the final round's dirty pages dropped: the copy must notice.
        @Test func droppingTheFinalDirtyPagesIsCaughtByTheGuest() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "128M", workingSet: "16M", extra: ["--guest-dirty-rate", "0"])
            // No throttle and a round cap: the guest keeps dirtying up to the switch-over, so the final round always has
            // pages to drop (a guest throttled to 99 % on a loaded machine can dirty none in a round).
            try migrateLive(
                fixture, from: "a", to: "b", options: ["--no-throttle", "--max-rounds", "3"],
                environment: "VMSEND_TEST_FAULT=drop-final-dirty-pages ", expectChecksOK: false)
            try waitUntil("the copy reports a failed check", timeout: .seconds(30)) {
                try fixture.status("b").vcpus.contains { $0.checksFailed > 0 }
            }
            #expect(try fixture.console("b").contains("check FAIL"))
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func aSlowlyDirtyingGuestConvergesInAFewRounds() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "32M", extra: ["--guest-dirty-rate", "5M/s"])
            let stderr = try migrateLive(fixture, from: "a", to: "b", options: ["-P"])
            let lines = stderr.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false) }
            let rounds = lines.filter { $0.first == "round" }
            let finals = lines.filter { $0.first == "final" }
            #expect(finals.count == 1, "\(stderr)")
            #expect((1...4).contains(rounds.count), "converged after \(rounds.count) rounds:\n\(stderr)")
            #expect(rounds.allSatisfy { $0[10] == "0" }, "a slow guest is never throttled:\n\(stderr)")
            // Rounds are numbered 0, 1, ... and the final round comes last.
            #expect((rounds + finals).map { Int($0[1]) } == Array(0...rounds.count), "\(stderr)")
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A guest that dirties its working set faster than a pipe of about 10 MB/s carries it: rounds stop
        /// shrinking, vmsend throttles the vCPUs, and switches over at the round cap.
        @Test func aGuestDirtyingFasterThanThePipeIsThrottledAndCompletes() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "8M", extra: ["--guest-dirty-rate", "0"])
            let stderr = try migrateLive(fixture, from: "a", to: "b", options: ["-v", "--max-rounds", "5"]) { send, receive in
                "\(send) | \(slowPipe) | \(receive)"
            }
            #expect(stderr.contains("vCPUs throttled"), "\(stderr)")
            let rounds = stderr.split(separator: "\n").filter { $0.hasPrefix("round ") && !$0.contains("%)") }
            #expect(rounds.count == 4, "\(stderr)")
            #expect(stderr.contains("final round 4"), "\(stderr)")
            // The copy is not left frozen by the throttle its source had.
            let before = try fixture.status("b")
            try waitUntil("the copy ticks on") {
                zip(try fixture.status("b").vcpus, before.vcpus).allSatisfy { $0.tick > $1.tick }
            }
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func liveWithLZ4() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "32M", extra: ["--guest-dirty-rate", "20M/s"])
            try migrateLive(fixture, from: "a", to: "b", options: ["-c", "lz4"])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func liveToAFileThenReceivedFromIt() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "32M", extra: ["--guest-dirty-rate", "20M/s"])
            let file = shellQuoted(fixture.file("live.vms"))
            try migrateLive(fixture, from: "a", to: "b") { send, receive in "\(send) > \(file) && \(receive) < \(file)" }
            try fixture.destroyAllAndExpectNothingLeft()
        }

        @Test func liveThroughNetcatOnLoopback() throws {
            try VMFixture.requireMachine()
            guard access("/usr/bin/nc", X_OK) == 0 else { try Test.cancel("netcat (nc) is not installed") }
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", workingSet: "32M", extra: ["--guest-dirty-rate", "20M/s"])
            let port = try freeLoopbackPort()
            // The listener starts first; the sender waits until /proc/net/tcp shows it listening (a probe
            // connection would use up nc's only one), and nc -N closes the socket at the stream's end.
            let hex = String(port, radix: 16, uppercase: true)
            let listening = "0100007F:" + String(repeating: "0", count: 4 - hex.count) + hex + " 00000000:0000 0A"
            try migrateLive(fixture, from: "a", to: "b") { send, receive in
                "nc -l 127.0.0.1 \(port) | \(receive) & "
                    + "i=0; while ! grep -q '\(listening)' /proc/net/tcp && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; "
                    + "\(send) | nc -N 127.0.0.1 \(port); wait $!"
            }
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A TCP port on 127.0.0.1 nobody listens on right now (the kernel picks it).
        func freeLoopbackPort() throws -> UInt16 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw ControlError("socket failed") }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = 0
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
                }
            }
            guard bound else { throw ControlError("bind to 127.0.0.1 failed") }
            return UInt16(bigEndian: address.sin_port)
        }
    }
}
