import CKVM
import Devices
import Glibc
import KVM
import Synchronization
import SystemSupport

/// Runs each vCPU on a thread of its own, parks them all for a pause, hands their I/O exits to the bus, and
/// throttles them for auto-converge.
///
/// Pausing sets `immediate_exit` and interrupts KVM_RUN with a signal whose handler does nothing; a vCPU stopped in
/// the middle of an I/O exit re-enters once with `immediate_exit` so KVM completes it before the state is read.
/// `@unchecked Sendable`: the mutable state is only touched with `gate` held.
final class VCPURunner: Pacer, @unchecked Sendable {
    /// The signal that interrupts KVM_RUN.
    static let kickSignal = SIGUSR2

    private let vcpus: [KVMVCPU]
    private let note: @Sendable (String) -> Void
    private let gate = Gate()
    /// Mirrors `pauseRequested` for sleeps, which must end early when a pause comes.
    private let pauseFlag = Atomic(true)
    /// Percent of each vCPU's time spent asleep so a live migration converges.
    private let throttlePercent = Atomic(0)

    // Guarded by `gate`.
    private var pauseRequested = true
    private var quitting = false
    private var parkedCount = 0
    private var threads: [pthread_t] = []
    private var crashed: Set<Int> = []
    private var failureText: String?

    /// `note` receives a line when a vCPU stops on its own (triple fault, KVM error).
    init(vcpus: [KVMVCPU], note: @escaping @Sendable (String) -> Void) throws {
        if ckvm_install_kick_handler(Self.kickSignal) != 0 { throw SystemError.last("sigaction") }
        self.vcpus = vcpus
        self.note = note
    }

    /// Starts one parked thread per vCPU; they run once `resume` is called.
    func start(bus: IOBus) throws {
        for index in vcpus.indices {
            let thread = try startThread("a vCPU thread") { [self] in run(index, bus: bus) }
            gate.withLock { threads.append(thread) }
        }
    }

    /// Why the guest stopped by itself, if it did.
    var failure: String? { gate.withLock { failureText } }

    /// Returns once every vCPU is parked (or crashed).
    func pause() {
        gate.lock()
        defer { gate.unlock() }
        pauseRequested = true
        pauseFlag.store(true, ordering: .relaxed)
        for vcpu in vcpus { vcpu.setImmediateExit(true) }
        while parkedCount < vcpus.count && !threads.isEmpty {
            for thread in threads { pthread_kill(thread, Self.kickSignal) }
            gate.wait(nanoseconds: 10_000_000)
        }
    }

    func resume() {
        gate.withLock {
            pauseRequested = false
            pauseFlag.store(false, ordering: .relaxed)
            gate.broadcast()
        }
    }

    /// Ends every thread and waits for it. Idempotent.
    func stop() {
        let running: [pthread_t] = gate.withLock {
            quitting = true
            pauseRequested = true
            pauseFlag.store(true, ordering: .relaxed)
            for vcpu in vcpus { vcpu.setImmediateExit(true) }
            defer { threads = [] }
            gate.broadcast()
            return threads
        }
        for thread in running {
            pthread_kill(thread, Self.kickSignal)
            pthread_join(thread, nil)
        }
    }

    /// Makes each vCPU sleep `percent` % of the time (0 to 99); 0 runs them flat out.
    func setThrottle(percent: Int) { throttlePercent.store(max(0, min(99, percent)), ordering: .relaxed) }

    /// Sleeps in short steps, ending early when a pause is requested.
    func sleep(nanoseconds: UInt64) {
        var remaining = nanoseconds
        while remaining > 0 && !pauseFlag.load(ordering: .relaxed) {
            let step = min(remaining, 5_000_000)
            var request = timespec(tv_sec: 0, tv_nsec: Int(step))
            nanosleep(&request, nil)
            remaining -= step
        }
    }

    private func run(_ index: Int, bus: IOBus) {
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, Self.kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        let vcpu = vcpus[index]
        var ioPending = false
        while true {
            gate.lock()
            if pauseRequested || quitting || crashed.contains(index) {
                if ioPending && !crashed.contains(index) {
                    gate.unlock()
                    // Re-enter with immediate_exit set: KVM completes the half-done I/O, then returns EINTR.
                    vcpu.setImmediateExit(true)
                    _ = try? vcpu.runOnce()
                    ioPending = false
                    continue
                }
                if quitting {
                    gate.unlock()
                    return
                }
                parkedCount += 1
                gate.broadcast()
                while (pauseRequested || crashed.contains(index)) && !quitting { gate.wait() }
                parkedCount -= 1
                gate.unlock()
                continue
            }
            vcpu.setImmediateExit(false)
            gate.unlock()

            let entered = HostClock.monotonicNanoseconds()
            let exit: VCPUExit
            do { exit = try vcpu.runOnce() } catch {
                crash(index, "\(error)")
                continue
            }
            ioPending = exit.isIO
            if let reason = handle(exit, vcpu: vcpu, index: index, bus: bus) {
                crash(index, reason)
                continue
            }
            let throttle = UInt64(throttlePercent.load(ordering: .relaxed))
            if throttle > 0 { sleep(nanoseconds: (HostClock.monotonicNanoseconds() - entered) * throttle / (100 - throttle)) }
        }
    }

    /// Emulates one exit; returns why the vCPU must stop, if it must.
    private func handle(_ exit: VCPUExit, vcpu: KVMVCPU, index: Int, bus: IOBus) -> String? {
        switch exit {
        case .interrupted, .halt:
            return nil
        case .io(let port, let isWrite, let size, let count, let dataOffset):
            guard let data = vcpu.ioData(offset: dataOffset, count: size * count) else {
                return "KVM_EXIT_IO with data outside kvm_run"
            }
            for item in 0..<count {
                let element = UnsafeMutableRawBufferPointer(rebasing: data[item * size..<(item + 1) * size])
                if isWrite {
                    bus.write(.port, address: UInt64(port), vcpu: index, from: UnsafeRawBufferPointer(element))
                } else {
                    bus.read(.port, address: UInt64(port), vcpu: index, into: element)
                }
            }
            return nil
        case .mmio(let address, let isWrite, let length):
            let data = vcpu.mmioData(length: length)
            if isWrite {
                bus.write(.mmio, address: address, vcpu: index, from: UnsafeRawBufferPointer(data))
            } else {
                bus.read(.mmio, address: address, vcpu: index, into: data)
            }
            return nil
        case .shutdown:
            return "the guest crashed (triple fault: KVM_EXIT_SHUTDOWN)"
        case .failEntry(let reason):
            return "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, reason 0x\(String(reason, radix: 16)))"
        case .internalError(let suberror):
            return "KVM internal error (suberror \(suberror))"
        case .other(let reason):
            return "unexpected exit reason \(reason)"
        }
    }

    /// A vCPU that cannot go on stops the machine: the others are parked too (as a triple fault resets a whole PC),
    /// so a crashed guest never runs on half. Only the first failure is noted.
    private func crash(_ index: Int, _ reason: String) {
        let text = "vcpu\(index): \(reason)"
        let first = gate.withLock {
            crashed.insert(index)
            let first = failureText == nil
            if first { failureText = text }
            pauseRequested = true
            pauseFlag.store(true, ordering: .relaxed)
            for vcpu in vcpus { vcpu.setImmediateExit(true) }
            for (other, thread) in threads.enumerated() where other != index { pthread_kill(thread, Self.kickSignal) }
            gate.broadcast()
            return first
        }
        if first { note(text) }
    }
}

extension VCPUExit {
    /// Port or MMIO: an exit KVM must complete on the next entry.
    var isIO: Bool {
        switch self {
        case .io, .mmio: true
        default: false
        }
    }
}
