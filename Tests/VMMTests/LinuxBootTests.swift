import MachineDescription
import SystemSupport
import Testing

@testable import VMM

/// The start-of-day data a Linux kernel reads at its PVH entry, checked byte by byte against its layout.
struct LinuxBootTests {
    @Test func theMPTableHasEveryProcessorTheIOAPICAndValidChecksums() {
        let table = MPTable.build(vcpus: 2, address: 0x9fc00, cpuSignature: 0xa00f11, cpuFeatures: 0x178b_fbff)
        #expect(Array(table[0..<4]) == Array("_MP_".utf8))
        #expect(table[0..<16].reduce(0, &+) == 0, "the floating pointer sums to 0")
        var pointer = ByteReader(table)
        _ = pointer.skip(4)
        #expect(pointer.u32() == 0x9fc10, "the configuration table follows the pointer")
        let configuration = Array(table[16...])
        #expect(Array(configuration[0..<4]) == Array("PCMP".utf8))
        let length = Int(configuration[4]) | Int(configuration[5]) << 8
        #expect(length == configuration.count)
        #expect(configuration.reduce(0, &+) == 0, "the configuration table sums to 0")
        let entries = Int(configuration[34]) | Int(configuration[35]) << 8
        // 2 processors, 1 bus, 1 IOAPIC, 15 ISA interrupts (all but IRQ 2), 2 local interrupts.
        #expect(entries == 2 + 1 + 1 + 15 + 2)
        let processors = configuration[44...].enumerated().filter { $0.offset % 20 == 0 && $0.offset < 40 }.map(\.element)
        #expect(processors == [0, 0], "both processor entries come first")
        #expect(configuration[44 + 3] == 3 && configuration[64 + 3] == 1, "vCPU 0 is the boot processor, vCPU 1 enabled")
        #expect(Array(configuration[86..<92]) == Array("ISA   ".utf8))
        #expect(configuration[92] == 2 && configuration[93] == 2, "the IOAPIC takes the id after the LAPICs")
        // IRQ 0 goes to pin 2, IRQ 4 (the serial port) to pin 4.
        #expect(Array(configuration[100..<108]) == [3, 0, 0, 0, 0, 0, 2, 2])
        #expect(Array(configuration[124..<132]) == [3, 0, 0, 0, 0, 4, 2, 4])
    }

    @Test func theStartInfoDescribesMemoryTheModuleAndTheCommandLine() {
        let config = MachineConfig(
            name: "lx", vcpuCount: 1, segments: MemorySegment.standardLayout(memorySize: 4 << 30), devices: [], cpuid: [])
        let bytes = LinuxBoot.startInfo(config: config, modules: [(0x7ff0_0000, 51200)])
        var reader = ByteReader(bytes)
        #expect(reader.u32() == 0x336e_c578)
        #expect(reader.u32() == 1)
        #expect(reader.u32() == 0)
        #expect(reader.u32() == 1, "one module, the initramfs")
        let modules = reader.u64()!
        #expect(reader.u64() == LinuxBoot.commandLineAddress)
        #expect(reader.u64() == 0, "no ACPI")
        #expect(reader.u64() == LinuxBoot.startInfoAddress + 56)
        let entries = reader.u32()!
        #expect(reader.u32() == 0)
        var map: [(UInt64, UInt64, UInt32)] = []
        for _ in 0..<entries {
            map.append((reader.u64()!, reader.u64()!, reader.u32()!))
            _ = reader.u32()
        }
        #expect(map.map(\.0) == [0, 0x9fc00, 0x10_0000, 4 << 30])
        #expect(map.map(\.2) == [1, 2, 1, 1], "RAM, the MP table reserved, RAM above 1 MiB, RAM above 4 GiB")
        #expect(map[2].1 == (3 << 30) - 0x10_0000 && map[3].1 == 1 << 30)
        #expect(modules == LinuxBoot.startInfoAddress + 56 + UInt64(entries) * 24)
        #expect(reader.u64() == 0x7ff0_0000 && reader.u64() == 51200)
    }

    @Test func theDefaultCommandLineAddsWhatAnEmulatingHostNeeds() {
        #expect(
            LinuxBoot.defaultCommandLine(emulatedRingZero: false)
                == "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 rdinit=/init")
        #expect(LinuxBoot.defaultCommandLine(emulatedRingZero: true).contains("clearcpuid=xsave,cx16,popcnt,smap,erms,fsrm"))
        #expect(
            DiskPlacement.kernelCommandLine(diskCount: 2)
                == "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
    }
}
