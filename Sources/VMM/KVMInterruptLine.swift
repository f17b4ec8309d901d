import Devices
import KVM

/// An interrupt line of the in-kernel irqchip, driven with KVM_IRQ_LINE (level-triggered, as the PC's ISA
/// devices and virtio-mmio are).
struct KVMInterruptLine: InterruptLine {
    let vm: KVMVirtualMachine
    let irq: UInt32

    /// The IOAPIC's 24 pins.
    static let lines: ClosedRange<UInt32> = 0...23

    func set(_ high: Bool) {
        // Fails only on a closed VM fd, when the machine is being destroyed.
        try? vm.setIRQLine(irq, high: high)
    }
}
