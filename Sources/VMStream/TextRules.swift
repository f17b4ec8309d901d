import MachineDescription

extension Payload {
    /// Text never holds NUL; names and the fields a receiver matches on are never empty. Empty may be only the
    /// tool's version, the CPU's vendor and model, the hypervisor's version and a setting's value.
    static func textProblem(_ begin: StreamBegin) -> String? {
        let host = begin.host
        var fields: [(what: String, text: String, mayBeEmpty: Bool)] = [
            ("tool", begin.tool, false), ("tool version", begin.toolVersion, true),
            ("host architecture", host.architecture, false), ("host CPU vendor", host.cpuVendor, true),
            ("host CPU model", host.cpuModel, true), ("hypervisor", host.hypervisor, false),
            ("hypervisor version", host.hypervisorVersion, true), ("machine name", begin.machine.name, false),
        ]
        fields += begin.machine.segments.map { ("segment name", $0.name, false) }
        for device in begin.machine.devices {
            fields += [("device name", device.name, false), ("device kind", device.kind, false)]
            for (key, value) in device.configuration.sorted(by: { $0.key < $1.key }) {
                fields += [("device setting name", key, false), ("device setting value", value, true)]
            }
        }
        for field in fields {
            if field.text.isEmpty && !field.mayBeEmpty { return "\(field.what) is empty" }
            if field.text.utf8.contains(0) { return "\(field.what) \(UntrustedText.quote(field.text)) contains NUL" }
        }
        return diskProblem(begin)
    }

    /// Disks: few enough, named once, whole 4 KiB blocks, a serial virtio-blk can report, a path exactly when the
    /// storage is shared, and no more allocated than the disk holds.
    static func diskProblem(_ begin: StreamBegin) -> String? {
        let disks = begin.machine.disks
        if disks.count > StreamFormat.maxDisks { return "more than \(StreamFormat.maxDisks) disks" }
        if begin.diskAllocation.count != disks.count {
            return "\(begin.diskAllocation.count) disk allocations for \(disks.count) disks"
        }
        var names = Set<String>()
        for (disk, allocated) in zip(disks, begin.diskAllocation) {
            if disk.name.isEmpty || !names.insert(disk.name).inserted { return "disk name \"\(disk.name)\" is empty or repeated" }
            if disk.size == 0 || disk.size % DiskConfig.blockSize != 0 || disk.size > StreamFormat.maxMemoryBytes {
                return "disk \(disk.name) is not a non-empty whole number of 4 KiB blocks up to 2^48 bytes"
            }
            if allocated > disk.size { return "disk \(disk.name) has \(allocated) bytes allocated of \(disk.size)" }
            if disk.serial.utf8.count > DiskConfig.maximumSerialLength {
                return "disk \(disk.name) has a serial longer than \(DiskConfig.maximumSerialLength) bytes"
            }
            if disk.sharedStorage != (disk.path?.isEmpty == false) {
                return "disk \(disk.name) must name its image exactly when its storage is shared"
            }
            for string in [disk.name, disk.serial, disk.path ?? ""]
            where string.utf8.count > Int(UInt16.max) || string.utf8.contains(0) {
                return "disk \(disk.name) has a string longer than 65535 bytes or holding NUL"
            }
        }
        return nil
    }
}
