#ifndef CKVM_H
#define CKVM_H
/// What Swift cannot reach on its own: ioctl request numbers (macros), the variadic ioctl(2),
/// kvm_run's anonymous unions, and a signal handler that does nothing.
#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

extern const unsigned long CKVM_GET_API_VERSION;
extern const unsigned long CKVM_CREATE_VM;
extern const unsigned long CKVM_CHECK_EXTENSION;
extern const unsigned long CKVM_GET_VCPU_MMAP_SIZE;
extern const unsigned long CKVM_GET_SUPPORTED_CPUID;
extern const unsigned long CKVM_GET_MSR_INDEX_LIST;

extern const unsigned long CKVM_CREATE_VCPU;
extern const unsigned long CKVM_SET_USER_MEMORY_REGION;
extern const unsigned long CKVM_SET_TSS_ADDR;
extern const unsigned long CKVM_CREATE_IRQCHIP;
extern const unsigned long CKVM_CREATE_PIT2;
extern const unsigned long CKVM_GET_PIT2;
extern const unsigned long CKVM_SET_PIT2;
extern const unsigned long CKVM_GET_CLOCK;
extern const unsigned long CKVM_SET_CLOCK;
extern const unsigned long CKVM_GET_IRQCHIP;
extern const unsigned long CKVM_SET_IRQCHIP;
extern const unsigned long CKVM_IRQ_LINE;
extern const unsigned long CKVM_GET_DIRTY_LOG;
extern const unsigned long CKVM_CLEAR_DIRTY_LOG;
extern const unsigned long CKVM_ENABLE_CAP;

extern const unsigned long CKVM_RUN;
extern const unsigned long CKVM_GET_REGS;
extern const unsigned long CKVM_SET_REGS;
extern const unsigned long CKVM_GET_SREGS;
extern const unsigned long CKVM_SET_SREGS;
extern const unsigned long CKVM_GET_XSAVE;
extern const unsigned long CKVM_GET_XSAVE2;
extern const unsigned long CKVM_SET_XSAVE;
extern const unsigned long CKVM_GET_XCRS;
extern const unsigned long CKVM_SET_XCRS;
extern const unsigned long CKVM_GET_DEBUGREGS;
extern const unsigned long CKVM_SET_DEBUGREGS;
extern const unsigned long CKVM_GET_LAPIC;
extern const unsigned long CKVM_SET_LAPIC;
extern const unsigned long CKVM_GET_MSRS;
extern const unsigned long CKVM_SET_MSRS;
extern const unsigned long CKVM_GET_VCPU_EVENTS;
extern const unsigned long CKVM_SET_VCPU_EVENTS;
extern const unsigned long CKVM_GET_MP_STATE;
extern const unsigned long CKVM_SET_MP_STATE;
extern const unsigned long CKVM_GET_CPUID2;
extern const unsigned long CKVM_SET_CPUID2;
extern const unsigned long CKVM_GET_TSC_KHZ;
extern const unsigned long CKVM_SET_TSC_KHZ;
extern const unsigned long CKVM_KVMCLOCK_CTRL;

/// ioctl(2) with a pointer argument; returns -1 and sets errno on failure.
int ckvm_ioctl(int fd, unsigned long request, void *argument);
/// ioctl(2) with an integer argument.
int ckvm_ioctl_value(int fd, unsigned long request, unsigned long argument);

/// KVM_GET_DIRTY_LOG for one slot into `bitmap` (one bit per page).
int ckvm_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap);
/// KVM_CLEAR_DIRTY_LOG: re-protects the pages whose bits are set in `bitmap`.
int ckvm_clear_dirty_log(int vm_fd, uint32_t slot, uint64_t first_page, uint32_t page_count, uint64_t *bitmap);

/// Installs a handler that does nothing for `signal`, without SA_RESTART, so it interrupts KVM_RUN.
int ckvm_install_kick_handler(int signal);

/// kvm_run fields behind anonymous unions.
static inline uint32_t ckvm_run_exit_reason(const struct kvm_run *run) { return run->exit_reason; }
static inline void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}
static inline uint8_t ckvm_run_io_direction(const struct kvm_run *run) { return run->io.direction; }
static inline uint8_t ckvm_run_io_size(const struct kvm_run *run) { return run->io.size; }
static inline uint16_t ckvm_run_io_port(const struct kvm_run *run) { return run->io.port; }
static inline uint32_t ckvm_run_io_count(const struct kvm_run *run) { return run->io.count; }
static inline uint64_t ckvm_run_io_data_offset(const struct kvm_run *run) { return run->io.data_offset; }
static inline uint64_t ckvm_run_mmio_address(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_length(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
/// The 8 data bytes of an MMIO exit: what the guest wrote, or where a read's answer goes.
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}
#endif
