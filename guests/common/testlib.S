/*
 * testlib.S -- the runtime every apfdbg test guest links with.
 *
 *   tl_init(rdi = vCPU index)    per-vCPU area -> GS.base, IDT with testlib's stubs -> IDTR
 *   tl_set_gate(rdi = vector, rsi = attribute byte, rdx = IST)   change one gate
 *   tl_set_gate_target(rdi = vector, rsi = handler)             point a gate elsewhere
 *   tl_set_hook(rdi = vector, rsi = function or 0)              per-vector hook (all vCPUs)
 *   (one IDT serves every vCPU and each tl_init rewrites it: change gates once all have run it)
 *   tl_enter_user(rdi = RIP, rsi = RSP, rdx = RFLAGS)           iretq to CPL 3 (0x23 / 0x1b);
 *                                   DS/ES/FS/GS become null first (RAX, RCX, R8 clobbered)
 *   tl_putc(dil), tl_puts(rdi), tl_puthex(rdi), tl_putdec(rdi)  console 0xe9, registers kept
 *   tl_pass, tl_fail(edi = code)                                 exit through port 0xf4
 *   tl_eoi_hook                                                  a hook that only sends EOI
 *
 * tl_fail also works at CPL 3, where ports are closed: it executes the `ud2` at tl_fail_ud2 and
 * the handler reports the failure code (RDI) from CPL 0.
 *
 * The handler behind every gate records what the CPU pushed (vector, error code, RIP, CS, RFLAGS,
 * RSP, SS), the handler's own RSP/RFLAGS/CS/SS and CR2 into the vCPU's area (testlib.inc, PC_*),
 * counts the vector, appends it to the log, checks that the CPU aligned the frame to 16 bytes, then
 *   1. calls the vector's hook, if any, with RDI = frame (F_*), RSI = per-vCPU area;
 *   2. if PC_RESUME is set: resumes there (iretq) or, with PC_RESUME_RSP, abandons the frame;
 *   3. otherwise an exception (vector < 32) without a hook is unexpected: the run fails with
 *      0x100 + vector; an interrupt (vector >= 32) without a hook is only recorded.
 */
    .include "testlib.inc"

    .section .text
    .code64

/* ---- setup --------------------------------------------------------------------------------- */
    .globl tl_init
    .type tl_init, @function
tl_init:                            /* rdi = vCPU index; RAX, RCX, RDX are clobbered */
    cmpq $MAX_VCPUS, %rdi
    jb 1f
    movl $0xfd, %edi                /* more vCPUs than testlib has areas for */
    call tl_fail
1:  pushq %rdi
    pushq %rsi
    movq %rdi, %rax
    shlq $12, %rax                  /* PCPU_SIZE */
    leaq tl_percpu(%rip), %rdx
    addq %rdx, %rax
    movq %rax, PC_SELF(%rax)
    movq %rdi, PC_INDEX(%rax)
    movq %rax, %rdx
    shrq $32, %rdx
    movl $MSR_GS_BASE, %ecx
    wrmsr
    /* Every vCPU writes the same gates (idempotent), so no vCPU waits for another. */
    xorl %edi, %edi
2:  pushq %rdi
    leaq tl_isr_stubs(%rip), %rsi
    movq %rdi, %rax
    shlq $4, %rax
    addq %rax, %rsi
    call tl_set_gate_target
    popq %rdi
    pushq %rdi
    movl $GATE_INT, %esi
    xorl %edx, %edx
    call tl_set_gate
    popq %rdi
    incl %edi
    cmpl $256, %edi
    jb 2b
    lidt tl_idtr(%rip)
    popq %rsi
    popq %rdi
    ret
    .size tl_init, . - tl_init

    .globl tl_set_gate_target
    .type tl_set_gate_target, @function
tl_set_gate_target:                 /* rdi = vector, rsi = handler; RAX kept */
    pushq %rax
    movq %rdi, %rax
    shlq $4, %rax
    leaq tl_idt(%rip), %rdx
    addq %rax, %rdx
    movw %si, 0(%rdx)               /* offset 15:0 */
    movw $KERNEL_CS, 2(%rdx)
    movq %rsi, %rax
    shrq $16, %rax
    movw %ax, 6(%rdx)               /* offset 31:16 */
    shrq $16, %rax
    movl %eax, 8(%rdx)              /* offset 63:32 */
    movl $0, 12(%rdx)
    popq %rax
    ret
    .size tl_set_gate_target, . - tl_set_gate_target

    .globl tl_set_gate
    .type tl_set_gate, @function
tl_set_gate:                        /* rdi = vector, sil = P|DPL|type, dl = IST (0..7) */
    pushq %rax
    movq %rdi, %rax
    shlq $4, %rax
    pushq %rcx
    leaq tl_idt(%rip), %rcx
    addq %rcx, %rax
    andb $7, %dl
    movb %dl, 4(%rax)
    movb %sil, 5(%rax)
    popq %rcx
    popq %rax
    ret
    .size tl_set_gate, . - tl_set_gate

    .globl tl_set_hook
    .type tl_set_hook, @function
tl_set_hook:                        /* rdi = vector, rsi = hook (0: none) */
    pushq %rax
    leaq tl_hooks(%rip), %rax
    movq %rsi, (%rax, %rdi, 8)
    popq %rax
    ret
    .size tl_set_hook, . - tl_set_hook

    .globl tl_enter_user
    .type tl_enter_user, @function
tl_enter_user:                      /* rdi = user RIP, rsi = user RSP, rdx = RFLAGS; no return */
    /* IRET to CPL 3 nulls DS/ES/FS/GS that hold a DPL 0 data segment, and what happens to the
     * hidden base then is vendor-specific.  Load the null selector first (as a 64-bit kernel
     * does) and then set GS.base again, so the handlers still find the per-vCPU area. */
    movq %gs:PC_SELF, %r8
    xorl %eax, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %fs
    movl %eax, %gs
    pushq %rdx
    movl $MSR_GS_BASE, %ecx
    movq %r8, %rax
    movq %r8, %rdx
    shrq $32, %rdx
    wrmsr
    popq %rdx
    pushq $USER_DS
    pushq %rsi
    pushq %rdx
    pushq $USER_CS
    pushq %rdi
    iretq
    .size tl_enter_user, . - tl_enter_user

/* ---- console ------------------------------------------------------------------------------- */
    .globl tl_putc
    .type tl_putc, @function
tl_putc:                            /* dil = byte */
    pushq %rax
    movl %edi, %eax
    outb %al, $PORT_CONSOLE
    popq %rax
    ret
    .size tl_putc, . - tl_putc

    .globl tl_puts
    .type tl_puts, @function
tl_puts:                            /* rdi = NUL-terminated string */
    pushq %rax
    pushq %rsi
    movq %rdi, %rsi
1:  movb (%rsi), %al
    testb %al, %al
    jz 2f
    outb %al, $PORT_CONSOLE
    incq %rsi
    jmp 1b
2:  popq %rsi
    popq %rax
    ret
    .size tl_puts, . - tl_puts

    .globl tl_puthex
    .type tl_puthex, @function
tl_puthex:                          /* rdi = value: "0x" and the digits, no leading zeros */
    pushq %rax
    pushq %rcx
    pushq %rdx
    movb $'0', %al
    outb %al, $PORT_CONSOLE
    movb $'x', %al
    outb %al, $PORT_CONSOLE
    movl $60, %ecx
    xorl %edx, %edx                 /* 1 once a digit was printed */
1:  movq %rdi, %rax
    shrq %cl, %rax
    andl $15, %eax
    testl %ecx, %ecx
    jz 2f                           /* always print the last digit */
    testl %edx, %edx
    jnz 2f
    testl %eax, %eax
    jz 3f
2:  movl $1, %edx
    movb tl_hexdigits(%rax), %al
    outb %al, $PORT_CONSOLE
3:  subl $4, %ecx
    jns 1b
    popq %rdx
    popq %rcx
    popq %rax
    ret
    .size tl_puthex, . - tl_puthex

    .globl tl_putdec
    .type tl_putdec, @function
tl_putdec:                          /* rdi = unsigned value */
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    subq $32, %rsp
    leaq 31(%rsp), %rsi
    movb $0, (%rsi)
    movq %rdi, %rax
    movl $10, %ecx
1:  xorl %edx, %edx
    divq %rcx
    addb $'0', %dl
    decq %rsi
    movb %dl, (%rsi)
    testq %rax, %rax
    jnz 1b
    pushq %rdi
    movq %rsi, %rdi
    call tl_puts
    popq %rdi
    addq $32, %rsp
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    ret
    .size tl_putdec, . - tl_putdec

/* ---- exit ---------------------------------------------------------------------------------- */
    .globl tl_pass
    .type tl_pass, @function
tl_pass:
    PUTS "PASS\n"
    xorl %eax, %eax
    outl %eax, $PORT_EXIT
1:  cli                             /* the machine did not stop: stop this vCPU for good */
    hlt
    jmp 1b
    .size tl_pass, . - tl_pass

    .globl tl_fail
    .type tl_fail, @function
tl_fail:                            /* edi = code; the caller's address is printed */
    cmpl $0, tl_first_fail(%rip)    /* for a debugger: the first failure code */
    jne 3f
    movl %edi, tl_first_fail(%rip)
3:
    movl %cs, %eax
    testb $3, %al
    jz 1f
    .globl tl_fail_ud2
tl_fail_ud2:                        /* CPL 3 cannot use ports: #UD here makes the kernel side */
    ud2                             /* report the failure (see tl_isr_common) */
1:  movl %edi, %esi
    movl %edi, %edi
    PUTS "FAIL "
    call tl_puthex
    PUTS " at "
    movq (%rsp), %rdi
    subq $5, %rdi                   /* the `call tl_fail` of the FAIL macro */
    call tl_puthex
    PUTS "\n"
    movl %esi, %eax
    outl %eax, $PORT_EXIT
2:  cli
    hlt
    jmp 2b
    .size tl_fail, . - tl_fail

/* ---- event handling -------------------------------------------------------------------------- */
    /* One 16-byte stub per vector.  Vectors without a CPU error code push a 0 in its place. */
    .balign 16
    .globl tl_isr_stubs
tl_isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp tl_isr_common
    .set vec, vec + 1
    .endr

    .globl tl_isr_common
    .type tl_isr_common, @function
tl_isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rbx                 /* rbx = frame (F_*) */
    pushfq
    popq %r12                       /* the handler's RFLAGS */
    movq %cr2, %r13
    movq %gs:PC_SELF, %rbp          /* rbp = this vCPU's area */
    testq %rbp, %rbp
    jnz 1f
    movl $0x201, %edi               /* no per-vCPU area: tl_init was not called */
    call tl_fail
1:  /* In 64-bit mode the CPU aligns RSP to 16 before it pushes SS: the frame ends 16-aligned. */
    leaq F_SIZE(%rbx), %rax
    testb $15, %al
    jz 2f
    movl $0x200, %edi
    call tl_fail
2:  movq F_VEC(%rbx), %rax
    cmpq $EXC_UD, %rax              /* tl_fail called at CPL 3: report it from here */
    jne 7f
    cmpq $tl_fail_ud2, F_RIP(%rbx)
    jne 7f
    movq F_RDI(%rbx), %rdi
    PUTS "(at CPL 3) "
    call tl_fail
7:  movq %rax, PC_VECTOR(%rbp)
    movq F_ERR(%rbx), %rcx
    movq %rcx, PC_ERROR(%rbp)
    movq F_RIP(%rbx), %rcx
    movq %rcx, PC_RIP(%rbp)
    movq F_CS(%rbx), %rcx
    movq %rcx, PC_CS(%rbp)
    movq F_RFLAGS(%rbx), %rcx
    movq %rcx, PC_RFLAGS(%rbp)
    movq F_RSP(%rbx), %rcx
    movq %rcx, PC_RSP(%rbp)
    movq F_SS(%rbx), %rcx
    movq %rcx, PC_SS(%rbp)
    movq %r12, PC_HFLAGS(%rbp)
    movq %r13, PC_CR2(%rbp)
    xorl %ecx, %ecx
    movw %cs, %cx
    movq %rcx, PC_HCS(%rbp)
    movw %ss, %cx
    movq %rcx, PC_HSS(%rbp)
    movzbl tl_has_error(%rax), %ecx
    movq %rcx, PC_HAS_ERR(%rbp)
    leaq F_RIP(%rbx), %rdx          /* where the CPU left RSP: the error code or RIP */
    shlq $3, %rcx
    subq %rcx, %rdx
    movq %rdx, PC_ENTRY_RSP(%rbp)
    incq PC_COUNT(%rbp)
    incl PC_COUNTS(%rbp, %rax, 4)
    movq PC_LOG_N(%rbp), %rcx
    cmpq $256, %rcx
    jae 3f
    movb %al, PC_LOG(%rbp, %rcx)
    incq PC_LOG_N(%rbp)
3:  leaq tl_hooks(%rip), %rcx
    movq (%rcx, %rax, 8), %rcx
    testq %rcx, %rcx
    jz 4f
    movq %rbx, %rdi
    movq %rbp, %rsi
    call *%rcx
    movq F_VEC(%rbx), %rax
    jmp 5f
4:  cmpq $0, PC_RESUME(%rbp)
    jne 5f
    cmpq $32, %rax
    jae .Liret
    /* An exception nobody expected: say what it was and fail with 0x100 + vector. */
    PUTS "unexpected vector "
    PUTHEX %rax
    PUTS " error "
    PUTHEX F_ERR(%rbx)
    PUTS " rip "
    PUTHEX F_RIP(%rbx)
    PUTS " cs "
    PUTHEX F_CS(%rbx)
    PUTS " cr2 "
    PUTHEX %r13
    PUTS "\n"
    leal 0x100(%eax), %edi
    call tl_fail
5:  movq PC_RESUME(%rbp), %rcx
    testq %rcx, %rcx
    jz .Liret
    movq $0, PC_RESUME(%rbp)
    movq PC_RESUME_RSP(%rbp), %rdx
    testq %rdx, %rdx
    jnz 6f
    movq %rcx, F_RIP(%rbx)
.Liret:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp                  /* vector and error code */
    iretq
6:  movq $0, PC_RESUME_RSP(%rbp)    /* abandon the frame: continue at PC_RESUME on that stack */
    movq %rdx, %rsp
    jmp *%rcx
    .size tl_isr_common, . - tl_isr_common

    .globl tl_eoi_hook
    .type tl_eoi_hook, @function
tl_eoi_hook:                        /* a hook for APIC interrupts: EOI and nothing else */
    movl $X2APIC_EOI, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    ret
    .size tl_eoi_hook, . - tl_eoi_hook

/* ---- data ---------------------------------------------------------------------------------- */
    .section .rodata
tl_hexdigits:
    .ascii "0123456789abcdef"
tl_has_error:                       /* 1 for the vectors whose exceptions push an error code */
    .byte 0,0,0,0,0,0,0,0, 1,0,1,1,1,1,1,0, 0,1,0,0,0,1,0,0, 0,0,0,0,0,1,1,0
    .fill 224, 1, 0

    .section .data
    .balign 16
    /* 0 under apfdbg.  The reference runner (tools/kvmrun.py) sets QUIRK_* bits (testlib.inc)
     * before the first instruction; the guests then skip the few checks that host cannot make.
     * Nothing else changes. */
    .globl tl_quirks
    .type tl_quirks, @object
    .size tl_quirks, 8
tl_quirks:
    .quad 0
    .globl tl_first_fail
    .type tl_first_fail, @object
    .size tl_first_fail, 8
tl_first_fail:
    .quad 0
    .globl tl_idtr
    .type tl_idtr, @object
    .size tl_idtr, 10
tl_idtr:
    .word 256 * 16 - 1
    .quad tl_idt

    .section .bss
    .balign 4096
    .globl tl_idt
    .type tl_idt, @object
    .size tl_idt, 256 * 16
tl_idt:
    .skip 256 * 16
    .globl tl_hooks
    .type tl_hooks, @object
    .size tl_hooks, 256 * 8
tl_hooks:
    .skip 256 * 8
    .balign 4096
    .globl tl_percpu
    .type tl_percpu, @object
    .size tl_percpu, PCPU_SIZE * MAX_VCPUS
tl_percpu:
    .skip PCPU_SIZE * MAX_VCPUS
