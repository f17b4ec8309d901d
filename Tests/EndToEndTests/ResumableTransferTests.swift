import Foundation
import Glibc
import MachineDescription
import Testing
import VMStream

extension MigrationEndToEndTests {
    /// `vmsend -s | ... | vmrecv -s`, cut by `head -c` where it hurts, then `vmsend -t` until the copy runs.
    @Suite struct ResumableTransferTests {
        /// Record offsets of the stream `vmsend -s --warm a` will write, read from a snapshot of the paused source:
        /// the same records, BEGIN 7 bytes shorter (it lacks the resumable field).
        struct Layout {
            var total: UInt64
            var firstDiskBlocks: UInt64
            var firstState: UInt64
            var end: UInt64
        }

        func layout(_ fixture: VMFixture, compression: String) throws -> Layout {
            let probe = fixture.file("probe.vms")
            let saved = try runShell(
                "\(fixture.command("vmsend", ["--warm", "--keep-running", "-c", compression, "a"])) > \(shellQuoted(probe))")
            #expect(saved.status == 0, "\(saved.standardError)")
            let dump = try runShell("\(shellQuoted(Products.path("vmstream"))) dump -v < \(shellQuoted(probe))")
            unlink(probe)
            func offset(of type: String) -> UInt64 {
                let line = dump.standardOutput.split(separator: "\n").first { $0.contains(" \(type) offset ") }
                let words = line?.split(separator: " ") ?? []
                let index = words.firstIndex(of: "offset").map { $0 + 1 } ?? words.endIndex
                return index < words.endIndex ? (UInt64(words[index]) ?? 0) + 7 : 0
            }
            let end = offset(of: "END")
            return Layout(
                total: end + 16 + 64 + 8, firstDiskBlocks: offset(of: "DISK BLOCKS"), firstState: offset(of: "KERNEL STATE"),
                end: end)
        }

        func token(_ fixture: VMFixture, _ name: String) throws -> ResumeToken {
            let text = try #require(try fixture.status(name).partial?.token, "'\(name)' holds no partial receive")
            return try ResumeToken(parsing: text)
        }

        /// A warm stream with a disk is cut in round data, in the disk's blocks, inside a state chunk and just before
        /// END, each time continued from the receiver's token; the copy then runs with every check passing, and no
        /// record the receiver verified travelled twice.
        @Test(arguments: ["none", "lz4"])
        func aStreamCutFourTimesArrivesWholeWithNothingVerifiedSentTwice(compression: String) throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let image = fixture.file("a.img")
            #expect(close(open(image, O_CREAT | O_WRONLY, 0o600)) == 0 && truncate(image, 16 << 20) == 0)
            try fixture.startGuest(
                "a", cpus: 1, memory: "128M", workingSet: "16M", extra: ["--disk", image, "--guest-disk-rate", "4M/s"])
            try waitUntil("'a' writes its disk") { (try fixture.status("a").disk?.writes ?? 0) > 50 }
            #expect(try fixture.vmctl(["pause", "a"]).status == 0)
            let before = try fixture.status("a")
            let layout = try layout(fixture, compression: compression)
            try #require(
                layout.firstDiskBlocks > 3_000_000 && layout.firstState > layout.firstDiskBlocks + 5_000
                    && layout.end > layout.firstState + 20, "\(layout)")

            let receive = fixture.command("vmrecv", ["-s", "--disk-dir", fixture.directory, "b"])
            let cuts = [3_000_000, layout.firstDiskBlocks + 5_000, layout.firstState + 20, layout.end]
            var point: ResumePoint?
            var delivered: UInt64 = 0
            var resent: [UInt64] = []
            /// A sender that wrote its whole stream into the pipe cannot tell that its reader missed the end: the
            /// source is then migrated, and a continuation needs --force.
            func continuation() throws -> String {
                let whole = try fixture.status("a").resumable?.completed == true
                return fixture.command("vmsend", ["-t", try token(fixture, "b").text] + (whole ? ["--force"] : []) + ["a"])
            }
            for (index, cut) in cuts.enumerated() {
                // A continuation carries a 32-byte header and a 72-byte RESUME before the records.
                let length = point.map { cut - $0.offset + 104 } ?? cut
                let send =
                    point == nil ? fixture.command("vmsend", ["-s", "--warm", "-c", compression, "a"]) : try continuation()
                // The last cut swallows the rest, so that the sender writes its END and takes the stream for whole.
                let cutter = index == cuts.count - 1 ? "{ head -c \(length); cat > /dev/null; }" : "head -c \(length)"
                let leg = try runShell("\(send) | \(cutter) | \(receive)")
                expectOneLine(
                    leg.standardError.split(separator: "\n").filter { $0.hasPrefix("vmrecv") }.joined(), "vmrecv",
                    saying: ["vmrecv: stream interrupted after ", "; resume with: vmsend -t ", " a | ... vmrecv -s b"])
                let source = try fixture.status("a")
                #expect(source.state == .paused || source.state == .migrated, "the source waits: \(source.stateDescription)")
                #expect(source.resumable?.expires != nil)
                let next = try token(fixture, "b").point
                try #require(next.offset <= cut && next.offset > (point?.offset ?? 0), "cut \(cut): \(next)")
                resent.append(cut - next.offset)
                delivered += length
                point = next
            }
            #expect(try fixture.status("a").state == .migrated, "the last sender wrote END")
            let unforced = try runShell("\(fixture.command("vmsend", ["-t", try token(fixture, "b").text, "a"])) > /dev/null")
            expectOneLine(unforced.standardError, "vmsend", saying: ["went out whole", "continue with --force"])
            let last = try runShell("\(try continuation()) -v | \(receive)")
            #expect(last.status == 0, "\(last.standardError)")
            let tail = layout.total - point!.offset + 104
            #expect(last.standardError.contains("bytes written of \(layout.total)"), "\(last.standardError)")
            #expect(last.standardError.contains(": \(tail) bytes written"), "\(last.standardError)")
            delivered += tail
            // Only the pieces of records cut in two travelled twice: each less than a record.
            #expect(resent.allSatisfy { $0 < (1 << 20) + 64 }, "\(resent)")
            #expect(resent.last == 0, "cut just before END: every record before it verified")
            print(
                "resume figures (\(compression)): stream \(layout.total) bytes; cuts at \(cuts); bytes of cut records "
                    + "sent again \(resent); \(delivered) bytes in 5 sends, \(delivered - layout.total) more than uncut")

            #expect(try fixture.status("a").state == .migrated)
            #expect(try fixture.status("a").resumable?.completed == true, "kept for the window, should END have been lost")
            try fixture.expectContinues("b", from: before)
            let copy = try fixture.status("b")
            #expect(copy.disk?.checksFailed == 0 && copy.partial == nil)
            let used = try runShell("\(fixture.command("vmsend", ["-t", tokenText(point!), "a"])) > /dev/null")
            expectOneLine(used.standardError, "vmsend", saying: ["the token was used: stream ", "went out whole"])
            #expect(used.status == 1)
            _ = try fixture.vmctl(["destroy", "b"])
            unlink(fixture.file("b-vda.img"))
            unlink(image)
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// Files as transport: a stream cut short in a file is kept from it, and the continuation, saved to a second
        /// file that `vmstream dump` reads on its own, completes the copy.
        @Test func aStreamSavedInTwoFilesIsReceivedFromThem() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let before = try fixture.startGuest("a", cpus: 1, memory: "64M", workingSet: "8M")
            let first = shellQuoted(fixture.file("first.vms"))
            let rest = shellQuoted(fixture.file("rest.vms"))
            _ = try runShell("\(fixture.command("vmsend", ["-s", "--warm", "-c", "lz4", "a"])) | head -c 1500000 > \(first)")
            let kept = try runShell("\(fixture.command("vmrecv", ["-s", "b"])) < \(first)")
            expectOneLine(kept.standardError, "vmrecv", saying: ["stream interrupted after", "vmrecv -s b"])
            let token = try ResumeToken(parsing: try #require(try fixture.status("b").partial?.token))
            let continued = try runShell("\(fixture.command("vmsend", ["-t", token.text, "a"])) > \(rest)")
            #expect(continued.status == 0, "\(continued.standardError)")
            let dump = try runShell("\(shellQuoted(Products.path("vmstream"))) dump < \(rest)")
            #expect(dump.status == 0, "\(dump.standardError)")
            #expect(dump.standardOutput.contains("\tcontinues stream = \(token.point.uuidString)\n"))
            #expect(dump.standardOutput.contains("\tfrom record = \(token.point.record) at byte \(token.point.offset)\n"))
            #expect(fixture.size(of: "rest.vms") < fixture.size(of: "first.vms") * 20, "only the rest travels")
            let received = try runShell("\(fixture.command("vmrecv", ["-s", "b"])) < \(rest)")
            #expect(received.status == 0, "\(received.standardError)")
            try fixture.expectContinues("b", from: before)
            #expect(try fixture.status("a").state == .migrated)
            unlink(fixture.file("first.vms"))
            unlink(fixture.file("rest.vms"))
            try fixture.destroyAllAndExpectNothingLeft()
        }

        func tokenText(_ point: ResumePoint, machine: String = "a", mode: MigrationMode = .warm) -> String {
            ResumeToken(point: point, machine: machine, mode: mode).text
        }

        /// Every token vmsend -t must refuse, each in one line, and what vmrecv -s and -A keep and remove.
        @Test func wrongStaleExpiredAndUsedTokensAndAbortAreRefusedOrDoneCleanly() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", cpus: 1, memory: "64M", workingSet: "8M")
            let vmsend = { (arguments: [String]) in fixture.command("vmsend", arguments) }
            let vmrecv = { (arguments: [String]) in fixture.command("vmrecv", arguments) }

            // Usage: a corrupt token and a bad window are wrong whatever the host.
            for arguments in [["-t", "not a token", "a"], ["-s", "--warm", "--resume-window", "0", "a"]] {
                let refused = try runShell("\(vmsend(arguments)) > /dev/null")
                #expect(refused.status == 2, "\(arguments): \(refused.standardError)")
                expectOneLine(refused.standardError, "vmsend")
            }
            let snapshot = shellQuoted(fixture.file("a.vms"))
            #expect(try runShell("\(vmsend(["--warm", "--keep-running", "a"])) > \(snapshot)").status == 0)
            // Without vmsend -s a receiver keeps nothing, and the source resumes as before.
            let plain = try runShell("\(vmsend(["--warm", "a"])) | head -c 1000000 | \(vmrecv(["-s", "c"]))")
            #expect(plain.standardError.contains("nothing was kept: the stream was not sent with vmsend -s"))
            try fixture.expectRunning("a")
            #expect(!fixture.exists("c.sock"))

            // Broken once: b holds a partial receive, a waits paused for 3 s.
            let first = try runShell(
                "\(vmsend(["-s", "--warm", "--resume-window", "3s", "a"])) | head -c 1000000 | \(vmrecv(["-s", "b"]))")
            #expect(first.status == 1)
            let status = try fixture.status("b")
            let token = try ResumeToken(parsing: try #require(status.partial?.token))
            #expect(status.state == .incoming && status.partial?.records == token.point.record - 1)
            let human = try fixture.vmctl(["status", "b"]).standardOutput
            #expect(human.contains("resume with:  vmsend -t \(token.text) a | ... vmrecv -s b"), "\(human)")
            #expect(try fixture.vmctl(["status", "a"]).standardOutput.contains("resumable:  stream \(token.point.uuidString)"))

            // Tokens of another machine, another stream, another mode.
            var other = token.point
            other.uuid = Array(repeating: 7, count: 16)
            for (text, words) in [
                (tokenText(token.point, machine: "z"), ["the token is for VM 'z', not 'a'"]),
                (
                    tokenText(other),
                    ["the token is for stream 07070707-", "keeps resume state for stream \(token.point.uuidString)"]
                ),
                (tokenText(token.point, mode: .live), ["the token names a live stream, but stream ", "went out warm"]),
            ] {
                let refused = try runShell("\(vmsend(["-t", text, "a"])) > /dev/null")
                #expect(refused.status == 1, "\(refused.standardError)")
                expectOneLine(refused.standardError, "vmsend", saying: words)
            }
            // A fresh stream into the name holding the partial receive, and a continuation where there is none.
            let fresh = try runShell("\(vmrecv(["b"])) < \(snapshot)")
            expectOneLine(fresh.standardError, "vmrecv", saying: ["VM 'b' holds a partial receive of stream", "vmrecv -A b"])
            let newSend = try runShell("\(vmsend(["--warm", "a"])) > /dev/null")
            expectOneLine(newSend.standardError, "vmsend", saying: ["for a continuation (vmsend -t): a new send would drop it"])
            let nowhere = try runShell("\(vmsend(["-t", token.text, "a"])) | \(vmrecv(["-s", "c"]))")
            #expect(nowhere.standardError.contains("vmrecv: there is no partial receive named 'c'"), "\(nowhere.standardError)")
            // That continuation reached a receiver, so the token is stale now; --force says it never arrived.
            let stale = try runShell("\(vmsend(["-t", token.text, "a"])) > /dev/null")
            expectOneLine(stale.standardError, "vmsend", saying: ["stale token: send 2 of stream"])
            let forced = try runShell("\(vmsend(["-t", token.text, "--force", "a"])) | head -c 2000000 | \(vmrecv(["-s", "b"]))")
            #expect(forced.standardError.contains("vmrecv: stream interrupted after "), "\(forced.standardError)")
            let later = try ResumeToken(parsing: try #require(try fixture.status("b").partial?.token))
            #expect(later.point.record > token.point.record && later.point.attempt == 3)
            // The receiver is the last judge: a continuation from an older place is refused before it takes anything.
            let behind = try runShell("\(vmsend(["-t", token.text, "--force", "a"])) | \(vmrecv(["-s", "b"]))")
            #expect(
                behind.standardError.contains(
                    "vmrecv: this continuation starts at record \(token.point.record) (byte \(token.point.offset), "),
                "\(behind.standardError)")
            #expect(behind.standardError.contains("but the partial receive here continues from record \(later.point.record)"))
            #expect(try fixture.status("b").partial?.token == later.text, "the partial receive stays as it was")

            // The window passes: the source resumes (its send paused it) and the token is refused saying so.
            try waitUntil("a resumes when its resume window passes", timeout: .seconds(15)) {
                try fixture.status("a").state == .running
            }
            let expired = try runShell("\(vmsend(["-t", later.text, "a"])) > /dev/null")
            expectOneLine(expired.standardError, "vmsend", saying: ["expired at ", "resume window 3 s"])
            #expect(fixture.log("a").contains("resume window of stream \(token.point.uuidString) passed"))

            // -A removes the partial receive and everything of it; a second -A and one on a running VM are refused.
            let abort = try fixture.vmctl(["status", "b"])
            #expect(abort.status == 0)
            let aborted = try runShell(vmrecv(["-A", "b"]))
            #expect(aborted.status == 0, "\(aborted.standardError)")
            #expect(!fixture.exists("b.sock") && !fixture.exists("b.console"))
            for name in ["b", "a"] {
                let refused = try runShell(vmrecv(["-A", name]))
                #expect(refused.status == 1)
                expectOneLine(
                    refused.standardError, "vmrecv",
                    saying: [name == "a" ? "holds no partial receive" : "no partial receive named 'b'"])
            }
            try fixture.expectRunning("a")
            unlink(fixture.file("a.vms"))
            try fixture.expectOnly(["a"])
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
