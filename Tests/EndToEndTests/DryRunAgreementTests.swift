import Foundation
import Glibc
import MachineDescription
import Testing
import VMControl
import VMStream

extension MigrationEndToEndTests {
    /// `vmstream dump`, `vmrecv -n` and `vmrecv` give one verdict: dump refuses a stream's format with the line
    /// the other two print, and -n refuses for this host exactly what a receive refuses, before creating anything.
    @Suite struct DryRunAgreementTests {
        /// The three verdicts on a file: exit status and stderr of each.
        func verdicts(_ fixture: VMFixture, _ name: String) throws -> [(tool: String, status: Int32, line: String)] {
            let file = shellQuoted(fixture.file(name))
            let dump = try runShell("\(Products.path("vmstream")) dump < \(file) > /dev/null")
            let dry = try runShell("\(fixture.command("vmrecv", ["-n", "b"])) < \(file)")
            let receive = try runShell("\(fixture.command("vmrecv", ["b"])) < \(file)")
            return [
                ("vmstream", dump.status, dump.standardError), ("vmrecv", dry.status, dry.standardError),
                ("vmrecv", receive.status, receive.standardError),
            ]
        }

        /// Without the tool's name, each tool's line; the receive's incoming machine must be gone already.
        func expectRefusedAlike(
            _ fixture: VMFixture, _ name: String, byDump: Bool, saying words: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let results = try verdicts(fixture, name)
            let lines = results.map { $0.line.drop { $0 != ":" }.dropFirst(2) }
            #expect(results[0].status == (byDump ? 1 : 0), "dump: \(results[0].line)", sourceLocation: sourceLocation)
            #expect(results[1].status == 1 && results[2].status == 1, "\(results)", sourceLocation: sourceLocation)
            #expect(lines[1] == lines[2], "-n and the receive disagree: \(results)", sourceLocation: sourceLocation)
            if byDump { #expect(lines[0] == lines[1], "dump and -n disagree: \(results)", sourceLocation: sourceLocation) }
            #expect(lines[1].contains(words), "\(results)", sourceLocation: sourceLocation)
            #expect(!results[2].line.contains("vmrecv: vmrun:"), "no double prefix", sourceLocation: sourceLocation)
            #expect(
                !fixture.exists("b.sock") && fixture.files().allSatisfy { !$0.hasPrefix("b.") && !$0.hasPrefix("b-") },
                "\(fixture.files())", sourceLocation: sourceLocation)
            #expect(fixture.processesInRunDirectory() == [try fixture.status("a").pid], sourceLocation: sourceLocation)
        }

        @Test func dumpDryRunAndReceiveRefuseTheSameStreams() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            try fixture.startGuest("a", memory: "64M", workingSet: "8M")
            #expect(
                try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(fixture.file("a.vms")))").status == 0)
            let stream = try fixture.contents(of: "a.vms")

            // 60 MiB of state nobody knows: within the stream's limits, so only the host refuses it, by name.
            try StreamEditor.rewrite(
                stream, to: fixture.file("big.vms"), editing: { _ in },
                state: { state in
                    for index in 0..<15 {
                        state.kernel.append(
                            StateChunk(name: "big\(index)", version: 1, data: [UInt8](repeating: 7, count: (4 << 20) - 4096)))
                    }
                })
            try expectRefusedAlike(
                fixture, "big.vms", byDump: false,
                saying: "this host cannot run VM 'b': state chunk 'big0' is not known to this vmrun")

            // A TSC twice as fast as this host's, which its KVM cannot scale.
            try StreamEditor.rewrite(
                stream, to: fixture.file("tsc.vms"), editing: { _ in },
                state: { state in
                    let index = state.kernel.firstIndex { $0.name == "vcpu1/tsc-khz" }!
                    let khz = state.kernel[index].data.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } * 2
                    state.kernel[index].data = withUnsafeBytes(of: khz.littleEndian) { Array($0) }
                })
            try expectRefusedAlike(
                fixture, "tsc.vms", byDump: false, saying: "state chunk vcpu1/tsc-khz: the guest's TSC runs at ")

            // A device setting this vmrun does not know, and a device kind it does not know.
            try StreamEditor.rewrite(stream, to: fixture.file("setting.vms")) {
                $0.machine.devices[0].configuration["color"] = "red"
            }
            try expectRefusedAlike(
                fixture, "setting.vms", byDump: false, saying: "device 'uart0': unknown setting 'color' for uart16550")
            try StreamEditor.rewrite(stream, to: fixture.file("kind.vms")) { $0.machine.devices[0].kind = "frob\u{1b}[2J" }
            try expectRefusedAlike(fixture, "kind.vms", byDump: false, saying: #"unknown kind 'frob\x1b[2J'"#)

            // The format: a flipped byte, and a cut.
            var flipped = stream
            flipped[stream.count - 200] ^= 0x01
            try fixture.write(flipped, to: "flipped.vms")
            try expectRefusedAlike(fixture, "flipped.vms", byDump: true, saying: "checksum mismatch in record ")
            try fixture.write(Array(stream[..<(stream.count / 3)]), to: "cut.vms")
            try expectRefusedAlike(fixture, "cut.vms", byDump: true, saying: "stream truncated at byte \(stream.count / 3)")

            // The untouched stream passes all three, and a name in use is refused by -n as by a receive.
            let good = try verdicts(fixture, "a.vms")
            #expect(good.map(\.status) == [0, 0, 0], "\(good)")
            let dryOnA = try runShell("\(fixture.command("vmrecv", ["-n", "a"])) < \(shellQuoted(fixture.file("a.vms")))")
            expectOneLine(dryOnA.standardError, "vmrecv", saying: ["a VM named 'a' already exists here (migrated, pid "])
            try fixture.destroyAllAndExpectNothingLeft()
        }

        /// A disk travels: -n keeps the blocks its fingerprint samples and checks the disk's state as a receive does.
        @Test func aDiskIsCheckedAlikeByDryRunAndReceive() throws {
            try VMFixture.requireMachine()
            let fixture = VMFixture()
            defer { fixture.cleanUp() }
            let image = fixture.file("a.img")
            #expect(truncate(image, 16 << 20) == 0 || MigrationEndToEndTests.DiskTests().createImage(image, size: "16M"))
            try fixture.startGuest("a", memory: "64M", workingSet: "8M", extra: ["--disk", image, "--guest-disk-rate", "8M/s"])
            try waitUntil("'a' writes its disk") { (try fixture.status("a").disk?.writes ?? 0) > 200 }
            #expect(
                try runShell("\(fixture.command("vmsend", ["--warm", "a"])) > \(shellQuoted(fixture.file("a.vms")))").status == 0)
            let stream = try fixture.contents(of: "a.vms")
            // The state's fingerprint of the disk, off by one.
            try StreamEditor.rewrite(
                stream, to: fixture.file("print.vms"), editing: { _ in },
                state: { state in
                    let index = state.devices.firstIndex { $0.name == "vda" }!
                    state.devices[index].data[state.devices[index].data.count - 1] ^= 1
                })
            try expectRefusedAlike(
                fixture, "print.vms", byDump: false,
                saying: "this host cannot run VM 'b': device 'vda': its image does not hold the sender's disk")
            // A sampled block (every 16th of 4096) changed in flight: only a check of what arrived can tell.
            var edited = false
            try StreamEditor.rewrite(
                stream, to: fixture.file("block.vms"), editing: { _ in },
                page: { area, page, bytes in
                    if area == 1 && page % 16 == 0 && !edited && bytes.contains(where: { $0 != 0 }) {
                        bytes[7] ^= 0x40
                        edited = true
                    }
                })
            #expect(edited, "the guest wrote a sampled block")
            try expectRefusedAlike(fixture, "block.vms", byDump: false, saying: "its image does not hold the sender's disk")
            let good = try verdicts(fixture, "a.vms")
            #expect(good.map(\.status) == [0, 0, 0], "\(good)")
            try fixture.destroyAllAndExpectNothingLeft()
        }
    }
}
