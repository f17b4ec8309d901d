; The bundled self-checking guest. Runs entirely in ring 3 (IOPL 3), 64-bit long mode, identity paging.
; The VMM places this code at CODE_BASE and starts each vCPU at its first byte with:
;   rdi = vCPU index, rsi = slice base (guest-physical), rdx = slice bytes (multiple of 8, > 0),
;   rcx = random seed, r8 = writes per tick (> 0), rsp = top of this vCPU's stack.
; Each vCPU adds pseudo-random values into random words of its slice and keeps the running total in r13.
; When the VMM asks (reply of the tick report), it sums the slice and compares: OK or FAIL.
; A stale or lost page changes the sum, so the check fails. Everything lives in registers and guest
; memory, so a migrated guest continues its counters instead of restarting.
;
; Ports: STATUS_PORT (in, dword) reports a tick; the reply's bit 0 asks for a check.
;        CHECK_PORT (out, dword) reports a check: 0 OK, 1 FAIL.
;        COM1 (0x3f8) 16550 UART: one line per check, and vCPU 0 echoes received lines as "rx: ...".
; Guest memory (shared with the VMM, see GuestLayout.swift):
;        STATUS_BLOCKS + 64 * index: tick, checks passed, checks failed (u64 each).
;        UART_LOCK: spin lock so lines of two vCPUs do not interleave. RX_LEN/RX_BUF: vCPU 0's input line.

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
    test eax, 1
    jz .no_check
    call check
.no_check:
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
rx_text:    db "rx: ", 0
