import SystemSupport

/// An Intel MultiProcessor Specification 1.4 table: how a Linux without ACPI learns of its processors and its
/// IOAPIC. A floating pointer structure, then a configuration table: one processor per vCPU, an ISA bus, the
/// IOAPIC, ISA IRQs 0-15 on its pins (IRQ 0 on pin 2), ExtINT on the boot CPU's LINT0 and NMI on every LINT1.
enum MPTable {
    static let localAPIC: UInt32 = 0xfee0_0000
    static let ioAPIC: UInt32 = 0xfec0_0000

    /// The table to place at `address` (the floating pointer first, the configuration table right after).
    static func build(vcpus: Int, address: UInt64, cpuSignature: UInt32, cpuFeatures: UInt32) -> [UInt8] {
        var entries = ByteWriter()
        var count = 0
        for vcpu in 0..<vcpus {
            entries.u8(0)  // processor
            entries.u8(UInt8(vcpu))  // LAPIC id
            entries.u8(0x14)  // LAPIC version
            entries.u8(vcpu == 0 ? 3 : 1)  // enabled, and the boot processor
            entries.u32(cpuSignature)
            entries.u32(cpuFeatures)
            entries.raw([UInt8](repeating: 0, count: 8))
            count += 1
        }
        entries.raw([1, 0] + Array("ISA   ".utf8))  // bus 0
        count += 1
        let ioAPICID = UInt8(vcpus)
        entries.raw([2, ioAPICID, 0x11, 1])
        entries.u32(ioAPIC)
        count += 1
        for irq in 0..<16 where irq != 2 {
            // I/O interrupt: INT, conforming polarity and trigger, ISA bus 0, IRQ to the IOAPIC's pin.
            entries.raw([3, 0, 0, 0, 0, UInt8(irq), ioAPICID, UInt8(irq == 0 ? 2 : irq)])
            count += 1
        }
        entries.raw([4, 3, 0, 0, 0, 0, 0, 0])  // local interrupt: ExtINT to LINT0 of LAPIC 0
        entries.raw([4, 1, 0, 0, 0, 0, 0xff, 1])  // NMI to LINT1 of every LAPIC
        count += 2

        var table = ByteWriter()
        table.raw(Array("PCMP".utf8))
        table.u16(UInt16(44 + entries.bytes.count))
        table.u8(4)  // revision 1.4
        table.u8(0)  // checksum, below
        table.raw(Array("VMSEND  ".utf8))
        table.raw(Array("VMRUN       ".utf8))
        table.u32(0)  // OEM table
        table.u16(0)
        table.u16(UInt16(count))
        table.u32(localAPIC)
        table.u16(0)
        table.u8(0)
        table.u8(0)
        table.raw(entries.bytes)
        var configuration = table.bytes
        configuration[7] = checksum(configuration)

        var pointer = ByteWriter()
        pointer.raw(Array("_MP_".utf8))
        pointer.u32(UInt32(address + 16))
        pointer.raw([1, 4, 0, 0, 0, 0, 0, 0])  // length in 16-byte units, revision, checksum (below), features
        var floating = pointer.bytes
        floating[10] = checksum(floating)
        return floating + configuration
    }

    /// The byte that makes `bytes` sum to 0 modulo 256.
    static func checksum(_ bytes: [UInt8]) -> UInt8 { 0 &- bytes.reduce(0, &+) }
}
