import Devices
import MachineDescription

/// Where a machine's virtio-blk devices sit: 4 KiB MMIO windows from 0xd0000000 up, in the 3-4 GiB hole, each on
/// an interrupt line of its own that the legacy PICs also reach (so a guest without an IOAPIC finds them too).
public enum DiskPlacement {
    public static let mmioBase: UInt64 = 0xd000_0000
    public static let windowSize: UInt64 = 0x1000
    public static let interruptLines: [UInt32] = [5, 6, 7, 10, 11, 12]
    public static var maximumDisks: Int { interruptLines.count }

    /// The virtio-blk device of disk `index`.
    static func device(for disk: DiskConfig, index: Int) -> DeviceConfig {
        VirtioBlock.configuration(disk: disk, mmio: mmioBase + UInt64(index) * windowSize, irq: interruptLines[index])
    }

    /// How Linux finds them without a device tree: `virtio_mmio.device=4K@0xd0000000:5 ...`.
    public static func kernelCommandLine(diskCount: Int) -> String {
        (0..<diskCount).map {
            "virtio_mmio.device=4K@0x\(String(mmioBase + UInt64($0) * windowSize, radix: 16)):\(interruptLines[$0])"
        }
        .joined(separator: " ")
    }

    /// Disk names in order: vda, vdb, ...
    public static func name(_ index: Int) -> String { "vd" + String(UnicodeScalar(UInt8(ascii: "a") + UInt8(index))) }
}
