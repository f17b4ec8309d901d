import Glibc
import MachineDescription
import Testing
import VMControl

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A real Linux, booted by vmrun through its PVH entry, judged by its own drivers, timers and test program: its
/// heartbeat (`vmtest: beat=N ...`, once a second) must go on across every migration, with no failure counted
/// and nothing in the kernel log about stalls, lockups or the clock.
///
/// `scripts/test.sh` builds the guest (`scripts/build-linux-guest.sh`) and names it in `VMSEND_LINUX_GUEST`.
@Suite(.serialized) struct LinuxGuestTests {
    /// The folder holding `vmlinux` and `initramfs`, or why there is none.
    static let guest: (folder: String?, reason: String) = {
        guard let folder = ProcessInfo.processInfo.environment["VMSEND_LINUX_GUEST"], !folder.isEmpty else {
            return (nil, "VMSEND_LINUX_GUEST is not set (scripts/test.sh builds the Linux guest and sets it)")
        }
        guard access(folder + "/vmlinux", R_OK) == 0, access(folder + "/initramfs", R_OK) == 0 else {
            return (nil, "no vmlinux and initramfs in \(folder)")
        }
        return (folder, "")
    }()

    /// Words that mean the kernel noticed something wrong with its time or its CPUs.
    static let kernelComplaints = [
        "rcu: INFO", "rcu_sched", "stall", "soft lockup", "hard LOCKUP", "hung_task", "blocked for more than",
        "clocksource watchdog", "timekeeping watchdog", "Call Trace", "BUG:", "Oops", "Kernel panic",
    ]

    func requireGuest() throws -> String {
        try VMFixture.requireMachine()
        guard let folder = Self.guest.folder else { try Test.cancel(Comment(rawValue: Self.guest.reason)) }
        return folder
    }

    /// Waits until `name`'s guest beats past `beat`, and returns that heartbeat.
    @discardableResult
    func waitForBeat(
        _ fixture: VMFixture, _ name: String, after beat: UInt64, timeout: Duration = .seconds(120)
    ) throws -> GuestHeartbeat {
        var last: GuestHeartbeat?
        try waitUntil("'\(name)' beats after beat \(beat)", timeout: timeout) {
            last = try fixture.status(name).heartbeat
            return (last?.beat ?? 0) > beat
        }
        return last!
    }

    func expectHealthy(_ heartbeat: GuestHeartbeat, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for counter in ["mem_failures", "disk_failures", "clock_jumps"] {
            #expect(
                heartbeat.fields[counter] == "0", "\(what): \(counter)=\(heartbeat.fields[counter] ?? "?")",
                sourceLocation: sourceLocation)
        }
    }

    func expectQuietKernel(_ fixture: VMFixture, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let console = try fixture.console(name)
        for complaint in Self.kernelComplaints {
            #expect(!console.contains(complaint), "'\(name)' logged '\(complaint)'", sourceLocation: sourceLocation)
        }
    }

    @Test func aLinuxGuestBootsIsSavedRestoredAndMigratedLiveFiveTimes() throws {
        let folder = try requireGuest()
        let fixture = VMFixture()
        defer { fixture.cleanUp() }
        #expect(
            truncate(fixture.file("disk.img"), 0) == 0
                || FileManager.default.createFile(atPath: fixture.file("disk.img"), contents: nil))
        #expect(truncate(fixture.file("disk.img"), 64 << 20) == 0)

        // Boot: 2 vCPUs, a disk its virtio_blk driver finds, a heartbeat once a second.
        let boot = try fixture.vmrun([
            "--cpus", "2", "--memory", "128M", "--kernel", folder + "/vmlinux", "--initrd", folder + "/initramfs",
            "--disk", fixture.file("disk.img"), "lx0",
        ])
        #expect(boot.status == 0, "\(boot.standardError)")
        let booted = ContinuousClock.now
        var heartbeat = try waitForBeat(fixture, "lx0", after: 2, timeout: .seconds(900))
        print("Linux booted to its third heartbeat in \(ContinuousClock.now - booted)")
        let console = try fixture.console("lx0")
        #expect(console.contains("Brought up 1 node, 2 CPUs"))
        #expect(console.contains("virtio_blk virtio0: [vda]"))
        #expect(console.contains("vmtest: ready") && console.contains("disk=ok"))
        expectHealthy(heartbeat, "after boot")

        // A cold snapshot of the running guest, and the guest restored from it elsewhere.
        let snapshot = fixture.file("lx.vms")
        let save = try runShell("\(fixture.command("vmsend", ["--warm", "--keep-running", "lx0"])) > \(shellQuoted(snapshot))")
        #expect(save.status == 0, "\(save.standardError)")
        let restoring = ContinuousClock.now
        let restore = try runShell(
            "\(fixture.command("vmrecv", ["--disk-dir", fixture.directory, "snap"])) < \(shellQuoted(snapshot))")
        #expect(restore.status == 0, "\(restore.standardError)")
        print(
            "the cold snapshot (\((try? FileManager.default.attributesOfItem(atPath: snapshot)[.size]) ?? "?") bytes) restored in \(ContinuousClock.now - restoring)"
        )
        let restored = try waitForBeat(fixture, "snap", after: heartbeat.beat)
        expectHealthy(restored, "after the cold restore")
        try expectQuietKernel(fixture, "snap")
        #expect(try fixture.vmctl(["destroy", "snap"]).status == 0)

        // Five live hops while the test program writes memory and disk.
        heartbeat = try waitForBeat(fixture, "lx0", after: heartbeat.beat)
        for hop in 1...5 {
            let (from, to) = ("lx\(hop - 1)", "lx\(hop)")
            let before = try fixture.status(from).heartbeat?.beat ?? 0
            let migrate = try runShell("\(fixture.command("vmsend", ["-v", from])) | \(fixture.command("vmrecv", ["-v", to]))")
            #expect(migrate.status == 0, "hop \(hop): \(migrate.standardError)")
            let line = migrate.standardError.split(separator: "\n").last { $0.hasPrefix("received VM") } ?? ""
            print("hop \(hop): \(line)")
            #expect(try fixture.status(from).state == .migrated)
            heartbeat = try waitForBeat(fixture, to, after: before + 2)
            expectHealthy(heartbeat, "after hop \(hop)")
            try expectQuietKernel(fixture, to)
            #expect(try fixture.vmctl(["destroy", from]).status == 0)
        }

        // A sender killed in the middle of the stream: the source Linux never paused, and goes on.
        let last = "lx5"
        let beatBefore = try fixture.status(last).heartbeat?.beat ?? 0
        let slow = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
            .appendingPathComponent("bench/ratelimit.py").path
        let fifo = fixture.file("cut.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        // vmsend writes into a FIFO, so its own pid is the one `$!` gives, and only it is killed.
        let cut = try runShell(
            "\(fixture.command("vmsend", [last])) > \(shellQuoted(fifo)) & sender=$!; "
                + "python3 \(shellQuoted(slow)) 4M < \(shellQuoted(fifo)) | \(fixture.command("vmrecv", ["cut"])) & "
                + "sleep 2; kill -9 $sender; wait")
        #expect(cut.standardError.contains("vmrecv:"), "the receiver says why it stopped: \(cut.standardError)")
        try waitUntil("the receiver of the cut stream gives up", timeout: .seconds(60)) {
            !fixture.sockets().contains("cut.sock")
        }
        #expect(try fixture.status(last).state == .running)
        let after = try waitForBeat(fixture, last, after: beatBefore + 2)
        expectHealthy(after, "after the cut send")
        try expectQuietKernel(fixture, last)
        try fixture.destroyAllAndExpectNothingLeft()
    }
}
