; The bundled self-checking guest. Runs entirely in ring 3 (IOPL 3), 64-bit long mode, identity paging.
; The VMM places this code at CODE_BASE and starts each vCPU at its first byte with:
;   rdi = vCPU index, rsi = slice base (guest-physical), rdx = slice bytes (multiple of 8, > 0),
;   rcx = random seed, r8 = writes per tick (> 0), rsp = top of this vCPU's stack.
; Each vCPU adds pseudo-random values into random words of its slice and keeps the running total in r13.
; When the VMM asks (reply of the tick report), it sums the slice and compares: OK or FAIL.
; A stale or lost page changes the sum, so the check fails. Everything lives in registers and guest
; memory, so a migrated guest continues its counters instead of restarting.
;
; With a disk (a virtio-blk device on virtio-mmio at VIRTIO_BASE), vCPU 0 also writes 4 KiB blocks to it, each
; carrying its block number and a sequence number, keeps the sequence it last wrote to each block in a table in
; guest memory, and after each burst of writes reads back and checks two written blocks: the one written last before
; the burst and a random one. A block lost or stale after a migration fails the check, as a stale page does; the
; last writes before a pause are the ones a migration most easily loses. It polls the used ring; interrupts stay off.
;
; Ports: STATUS_PORT (in, dword) reports a tick; the reply's bit 0 asks for a check, bits 8-23 the number of
;        disk blocks to write now (vCPU 0).
;        CHECK_PORT (out, dword) reports a check: 0 OK, 1 FAIL.
;        COM1 (0x3f8) 16550 UART: one line per check, and vCPU 0 echoes received lines as "rx: ...".
; Guest memory (shared with the VMM, see GuestLayout.swift):
;        STATUS_BLOCKS + 64 * index: tick, checks passed, checks failed (u64 each).
;        STATUS_BLOCKS + 24/32/40/48 (vCPU 0): disk writes, disk checks passed, failed, disk state (1 ready, 2 none).
;        UART_LOCK: spin lock so lines of two vCPUs do not interleave. RX_LEN/RX_BUF: vCPU 0's input line.
;        DISK_AREA: the disk worker's state, queue, request, data buffer and sequence table (GuestLayout.diskArea).

bits 64
default abs

CODE_BASE     equ 0x10000
STATUS_BLOCKS equ 0x2000
UART_LOCK     equ 0x3000
RX_LEN        equ 0x3008
RX_BUF        equ 0x3010
RX_MAX        equ 64
COM1          equ 0x3f8
STATUS_PORT   equ 0x500
CHECK_PORT    equ 0x501
RX_POLL_MASK  equ 15           ; vCPU 0 polls the UART every 16 ticks

VIRTIO_BASE   equ 0xd0000000    ; the first disk's virtio-mmio window (DiskPlacement.swift)
DISK_STATE    equ STATUS_BLOCKS + 48
DISK_WRITES   equ STATUS_BLOCKS + 24
DISK_OK       equ STATUS_BLOCKS + 32
DISK_FAILED   equ STATUS_BLOCKS + 40
DISK_AREA     equ 0x80000
DSK_BLOCKS    equ DISK_AREA         ; 4 KiB blocks the worker uses (at most TABLE_MAX)
DSK_SEQ       equ DISK_AREA + 8     ; the last sequence number written
DSK_CURSOR    equ DISK_AREA + 16    ; the next block to write
DSK_LAST      equ DISK_AREA + 24    ; the block written last before this burst
QUEUE_DESC    equ DISK_AREA + 0x1000
QUEUE_AVAIL   equ DISK_AREA + 0x1100
QUEUE_USED    equ DISK_AREA + 0x1200
QUEUE_SIZE    equ 8
REQUEST       equ DISK_AREA + 0x2000
REQ_STATUS    equ DISK_AREA + 0x2010
DATA          equ DISK_AREA + 0x8000    ; up to BURST_MAX blocks
SEQ_TABLE     equ DISK_AREA + 0x10000   ; u64 per block, TABLE_MAX blocks
TABLE_MAX     equ 4096
BURST_MAX     equ 8                     ; blocks written by one request
POLL_LIMIT    equ 0x40000000    ; pause-spins before a request counts as failed

org CODE_BASE

start:
    mov rbx, rsi                ; rbx = slice base
    mov rbp, rdx
    shr rbp, 3                  ; rbp = words in the slice
    mov r12, r8                 ; r12 = writes per tick
    mov r14, rcx                ; r14 = xorshift64 state
    test r14, r14
    jnz .seeded
    mov r14, 0x9E3779B97F4A7C15
.seeded:
    mov r15, rdi
    shl r15, 6
    add r15, STATUS_BLOCKS      ; r15 = this vCPU's status block
    call slice_sum
    mov r13, rax                ; the total starts at whatever the slice holds

main_loop:
    mov rcx, r12
.write:
    mov rax, r14                ; xorshift64 (13, 7, 17)
    shl rax, 13
    xor r14, rax
    mov rax, r14
    shr rax, 7
    xor r14, rax
    mov rax, r14
    shl rax, 17
    xor r14, rax
    mov rax, r14
    shr rax, 32
    imul rax, rbp
    shr rax, 32                 ; rax = word index in [0, words)
    add [rbx + rax*8], r14
    add r13, r14
    dec rcx
    jnz .write

    inc qword [r15]             ; tick
    mov dx, STATUS_PORT
    in eax, dx                  ; report the tick; the VMM may sleep here (pacing)
    mov r10d, eax               ; keep the reply: check and print leave r10 alone
    test eax, 1
    jz .no_check
    call check
.no_check:
    mov eax, r10d
    shr eax, 8
    and eax, 0xffff
    jz .no_disk
    call disk_work
.no_disk:
    test rdi, rdi
    jnz main_loop
    mov rax, [r15]
    test rax, RX_POLL_MASK
    jnz main_loop
    call poll_uart
    jmp main_loop

; rax = sum of the slice's words (mod 2^64).
slice_sum:
    xor eax, eax
    xor ecx, ecx
.loop:
    add rax, [rbx + rcx*8]
    inc rcx
    cmp rcx, rbp
    jb .loop
    ret

; Sums the slice, compares with r13, reports and prints the result.
check:
    call slice_sum
    cmp rax, r13
    jne .fail
    inc qword [r15 + 8]
    xor eax, eax
    mov dx, CHECK_PORT
    out dx, eax
    mov rsi, ok_text
    jmp .print
.fail:
    inc qword [r15 + 16]
    mov r13, rax                ; resynchronise, so the next check measures new damage only
    mov eax, 1
    mov dx, CHECK_PORT
    out dx, eax
    mov rsi, fail_text
.print:
    call lock_uart
    push rsi
    mov rsi, cpu_text
    call print_string
    mov rax, rdi
    mov ecx, 2
    call print_hex
    mov rsi, tick_text
    call print_string
    mov rax, [r15]
    mov ecx, 16
    call print_hex
    pop rsi
    call print_string
    call unlock_uart
    ret

; vCPU 0: writes eax blocks, in requests of up to BURST_MAX contiguous blocks, then reads back and checks the
; block written last before them and a random written block.
disk_work:
    mov r9, rax                 ; r9 = blocks still to write
    cmp qword [DISK_STATE], 1
    je .ready
    cmp qword [DISK_STATE], 0
    jne .done                   ; no disk
    call disk_init
    cmp qword [DISK_STATE], 1
    jne .done
.ready:
    mov rax, [DSK_CURSOR]
    test rax, rax
    jnz .before
    mov rax, [DSK_BLOCKS]
.before:
    dec rax
    mov [DSK_LAST], rax
.write:
    mov r8, [DSK_CURSOR]        ; r8 = first block of this request
    mov r10, [DSK_BLOCKS]
    sub r10, r8                 ; blocks before the end of the area
    cmp r10, r9
    jbe .fits_end
    mov r10, r9
.fits_end:
    cmp r10, BURST_MAX
    jbe .sized
    mov r10, BURST_MAX          ; r10 = blocks in this request
.sized:
    mov r11, [DSK_SEQ]          ; r11 = sequence
    inc r11
    mov [DSK_SEQ], r11
    xor ecx, ecx
.fill:
    push rcx
    push r8
    add r8, rcx
    mov rdi, rcx
    shl rdi, 12                 ; this block's offset in DATA
    call fill_block
    pop r8
    pop rcx
    inc rcx
    cmp rcx, r10
    jb .fill
    xor edi, edi                ; vCPU 0: rdi is 0 again
    mov eax, 1                  ; VIRTIO_BLK_T_OUT
    call disk_request
    test eax, eax
    jnz .failed
    xor ecx, ecx
.record:
    lea rax, [r8 + rcx]
    mov [SEQ_TABLE + rax*8], r11
    inc qword [DISK_WRITES]
    inc rcx
    cmp rcx, r10
    jb .record
    add r8, r10
    cmp r8, [DSK_BLOCKS]
    jb .next
    xor r8d, r8d
.next:
    mov [DSK_CURSOR], r8
    sub r9, r10
    jnz .write
    mov r8, [DSK_LAST]
    call read_back
    test eax, eax
    jnz .failed
    mov rax, r14                ; a random block
    shr rax, 11
    xor edx, edx
    div qword [DSK_BLOCKS]
    mov r8, rdx
    call read_back
    test eax, eax
    jnz .failed
.done:
    ret
.failed:
    inc qword [DISK_FAILED]
    mov rsi, disk_fail_text
    jmp check.print

; Finds the virtio-blk device and sets up its queue (virtio 1.x §3.1.1); DISK_STATE 1 when ready, 2 when not.
disk_init:
    mov qword [DISK_STATE], 2
    mov rsi, VIRTIO_BASE
    cmp dword [rsi], 0x74726976 ; "virt": an open bus reads all ones
    jne .done
    cmp dword [rsi + 4], 2
    jne .done
    cmp dword [rsi + 8], 2      ; a block device
    jne .done
    mov dword [rsi + 0x70], 0   ; reset
    mov dword [rsi + 0x70], 1   ; ACKNOWLEDGE
    mov dword [rsi + 0x70], 3   ; DRIVER
    mov dword [rsi + 0x24], 1
    mov dword [rsi + 0x20], 1   ; VIRTIO_F_VERSION_1 (bit 32), nothing else
    mov dword [rsi + 0x24], 0
    mov dword [rsi + 0x20], 0
    mov dword [rsi + 0x70], 11  ; FEATURES_OK
    test dword [rsi + 0x70], 8
    jz .done
    mov dword [rsi + 0x30], 0   ; queue 0
    mov dword [rsi + 0x38], QUEUE_SIZE
    mov dword [rsi + 0x80], QUEUE_DESC
    mov dword [rsi + 0x84], 0
    mov dword [rsi + 0x90], QUEUE_AVAIL
    mov dword [rsi + 0x94], 0
    mov dword [rsi + 0xa0], QUEUE_USED
    mov dword [rsi + 0xa4], 0
    mov dword [rsi + 0x44], 1   ; QueueReady
    mov dword [rsi + 0x70], 15  ; DRIVER_OK
    mov rax, [rsi + 0x100]      ; capacity in 512-byte sectors
    shr rax, 3
    cmp rax, TABLE_MAX
    jbe .sized
    mov eax, TABLE_MAX
.sized:
    test rax, rax
    jz .done
    mov [DSK_BLOCKS], rax
    mov qword [DISK_STATE], 1
.done:
    ret

; One request of type eax on r10 blocks from block r8 through the data buffer: header, data, status; waits for it in
; the used ring. Returns its status byte in eax (0 OK), or 0xff when the device never answered.
disk_request:
    mov [REQUEST], eax
    mov dword [REQUEST + 4], 0
    mov rdx, r8
    shl rdx, 3
    mov [REQUEST + 8], rdx      ; sector
    mov byte [REQ_STATUS], 0xff
    mov qword [QUEUE_DESC], REQUEST
    mov dword [QUEUE_DESC + 8], 16
    mov dword [QUEUE_DESC + 12], 0x00010001     ; NEXT, next 1
    mov qword [QUEUE_DESC + 16], DATA
    mov rdx, r10
    shl rdx, 12
    mov [QUEUE_DESC + 24], edx
    mov ecx, 0x00020001         ; NEXT, next 2
    test eax, eax
    jnz .out
    mov ecx, 0x00020003         ; a read: the device writes the data
.out:
    mov [QUEUE_DESC + 28], ecx
    mov qword [QUEUE_DESC + 32], REQ_STATUS
    mov dword [QUEUE_DESC + 40], 1
    mov dword [QUEUE_DESC + 44], 2                  ; WRITE
    movzx ecx, word [QUEUE_AVAIL + 2]
    mov edx, ecx
    and edx, QUEUE_SIZE - 1
    mov word [QUEUE_AVAIL + 4 + rdx*2], 0           ; chain head 0
    inc ecx
    mov [QUEUE_AVAIL + 2], cx   ; x86 keeps stores in order: the entry is visible before the index
    mov rsi, VIRTIO_BASE
    mov dword [rsi + 0x50], 0   ; QueueNotify
    mov edx, POLL_LIMIT
.poll:
    cmp [QUEUE_USED + 2], cx
    je .answered
    pause
    dec edx
    jnz .poll
    mov eax, 0xff
    ret
.answered:
    mov eax, [rsi + 0x60]
    mov [rsi + 0x64], eax       ; acknowledge the interrupt
    movzx eax, byte [REQ_STATUS]
    ret

; Reads block r8 back and compares it with the sequence last written to it: eax 0 when it matches (counted as a
; passed check) or was never written, nonzero when it differs or the read failed.
read_back:
    xor eax, eax                ; VIRTIO_BLK_T_IN
    mov r11, [SEQ_TABLE + r8*8]
    test r11, r11
    jz .done
    mov r10d, 1
    call disk_request
    test eax, eax
    jnz .done
    call verify_block
    mov eax, 1                  ; mov leaves the flags alone
    jne .done
    xor eax, eax
    inc qword [DISK_OK]
.done:
    ret

; Fills 4 KiB of the data buffer at offset rdi with block r8's contents for sequence r11.
fill_block:
    call block_seed
.loop:
    mov [DATA + rdi + rcx*8], rax
    add rax, rdx
    inc ecx
    cmp ecx, 512
    jb .loop
    ret

; Compares the data buffer with block r8's contents for sequence r11; ZF set when equal.
verify_block:
    call block_seed
.loop:
    cmp [DATA + rcx*8], rax
    jne .done
    add rax, rdx
    inc ecx
    cmp ecx, 512
    jb .loop
    xor eax, eax                ; sets ZF
.done:
    ret

; rax = the first word of block r8 at sequence r11, rdx = the step between words, ecx = 0.
block_seed:
    mov rax, r11
    shl rax, 20
    xor rax, r8
    mov rdx, 0x9E3779B97F4A7C15
    imul rax, rdx
    mov rdx, 0xD6E8FEB86659FD93
    xor ecx, ecx
    ret

; vCPU 0 only: reads every byte waiting in the UART; a newline (or a full buffer) prints "rx: LINE".
poll_uart:
.more:
    mov dx, COM1 + 5
    in al, dx                   ; LSR
    test al, 1                  ; data ready
    jz .done
    mov dx, COM1
    in al, dx                   ; RBR
    cmp al, 10
    je .flush
    cmp al, 13
    je .flush
    mov rcx, [RX_LEN]
    mov [RX_BUF + rcx], al
    inc rcx
    mov [RX_LEN], rcx
    cmp rcx, RX_MAX
    jb .more
.flush:
    mov rcx, [RX_LEN]
    test rcx, rcx
    jz .more
    call lock_uart
    mov rsi, rx_text
    call print_string
    mov rcx, [RX_LEN]
    mov rsi, RX_BUF
    mov dx, COM1
.echo:
    mov al, [rsi]
    out dx, al
    inc rsi
    dec rcx
    jnz .echo
    mov al, 10
    out dx, al
    mov qword [RX_LEN], 0
    call unlock_uart
    jmp .more
.done:
    ret

; Prints the zero-terminated string at rsi.
print_string:
    mov dx, COM1
.loop:
    mov al, [rsi]
    test al, al
    jz .done
    out dx, al
    inc rsi
    jmp .loop
.done:
    ret

; Prints the low rcx hex digits of rax, most significant first.
print_hex:
    mov rsi, rax
    mov dx, COM1
.loop:
    lea r8, [rcx*4 - 4]
    mov rax, rsi
    push rcx
    mov ecx, r8d
    shr rax, cl
    pop rcx
    and eax, 15
    mov al, [hex_digits + rax]
    out dx, al
    dec rcx
    jnz .loop
    ret

lock_uart:
    mov eax, 1
.spin:
    xchg eax, [UART_LOCK]
    test eax, eax
    jz .held
    pause
    mov eax, 1
    jmp .spin
.held:
    ret

unlock_uart:
    mov dword [UART_LOCK], 0
    ret

hex_digits: db "0123456789abcdef"
cpu_text:   db "cpu", 0
tick_text:  db " tick ", 0
ok_text:    db " check OK", 10, 0
fail_text:  db " check FAIL", 10, 0
disk_fail_text: db " disk check FAIL", 10, 0
rx_text:    db "rx: ", 0
