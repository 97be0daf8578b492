/*
 * ipi: inter-processor and self interrupts through the x2APIC ICR (run with 2 vCPUs).
 *
 *  - vCPU 1 sends a fixed IPI 0x50 (physical destination 0) to vCPU 0 sleeping in `sti; hlt`:
 *    vCPU 0's handler takes it (saved RIP = after the hlt), vCPU 1 never sees it;
 *  - vCPU 1 sends 0x51 with the all-excluding-self shorthand: only vCPU 0 gets it;
 *  - vCPU 0 sends 0x54 to vCPU 1 (destination 1): only vCPU 1 gets it;
 *  - self IPIs with IF = 0: SELF IPI register (0x83f) vector 0x52 shows in IRR, is not taken
 *    while IF = 0 and wakes `sti; hlt`; the ICR self shorthand vector 0x53 likewise;
 *  - priority: 0x50, 0x61, 0x60 pending together are taken highest first (0x61, 0x60, 0x50),
 *    each after the previous one's EOI;
 *  - one in service per priority class: while the handler of 0x60 runs with IF = 1 and no EOI
 *    yet (PPR = 0x60), a new 0x70 (higher class) preempts it but a new 0x61 (same class) waits
 *    for the EOI: order 0x60, 0x70, 0x61.
 * Pending interrupts are always taken in `sti; hlt` loops here; the STI shadow and taking an
 * interrupt without a hlt are the `sti_hlt` guest's business.
 */
    .include "testlib.inc"

    .set ICR_FIXED, 0x4000              /* fixed delivery, physical, level = assert */

    /* Sleep in `sti; hlt` until the log of this vCPU has grown to base + n entries. */
    .macro WAIT_LOG base, n
.Lwait\@:
    movq %gs:PC_LOG_N, %rax
    subq \base, %rax
    cmpq $\n, %rax
    jae .Lwaited\@
    sti
    hlt
    cli
    jmp .Lwait\@
.Lwaited\@:
    .endm

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movq %rdi, %r15
    MSR_WRITE X2APIC_SVR, 0x1ff
    leaq tl_eoi_hook(%rip), %rsi
    movl $0x50, %edi
1:  call tl_set_hook                    /* 0x50-0x7f: EOI and nothing else */
    incl %edi
    cmpl $0x80, %edi
    jb 1b
    testq %r15, %r15
    jz vcpu0
    cmpq $1, %r15
    je vcpu1
2:  cli                                 /* more vCPUs: not needed */
    hlt
    jmp 2b

/* ---- vCPU 0 ----------------------------------------------------------------------------------- */
vcpu0:
    movl $1, ready0(%rip)               /* APIC on: vCPU 1 may send 0x50 */
1:  cmpl $0, %gs:PC_COUNTS+0x50*4
    jne 2f
    sti
    hlt
after_hlt0:
    cli
    jmp 1b
2:  ASSERT_EQ %gs:PC_RIP, $after_hlt0, 0x10
    cmpl $1, %gs:PC_COUNTS+0x50*4
    je 3f
    FAIL 0x11
3:  movl $2, ready0(%rip)               /* vCPU 1: the all-but-self IPI now */
1:  cmpl $0, %gs:PC_COUNTS+0x51*4
    jne 2f
    sti
    hlt
    cli
    jmp 1b
2:
    /* self IPI register, with IF = 0: pending in IRR until sti; nop */
    MSR_WRITE X2APIC_SELF_IPI, 0x52
    MSR_READ X2APIC_IRR0+2              /* IRR bits 95:64 */
    btl $(0x52 - 64), %eax
    jc 3f
    FAIL 0x13
3:  cmpl $0, %gs:PC_COUNTS+0x52*4
    je 3f
    FAIL 0x14                           /* taken with IF = 0 */
3:  movq %gs:PC_LOG_N, %r12
    WAIT_LOG %r12, 1
    cmpl $1, %gs:PC_COUNTS+0x52*4
    je 3f
    FAIL 0x15
3:  movq %gs:PC_LOG_N, %r12
    MSR_WRITE X2APIC_ICR, (ICR_SELF | ICR_FIXED | 0x53)
    WAIT_LOG %r12, 1
    cmpl $1, %gs:PC_COUNTS+0x53*4
    je 3f
    FAIL 0x16
3:
    /* priority: highest vector first */
    movq %gs:PC_LOG_N, %r12
    MSR_WRITE X2APIC_SELF_IPI, 0x50
    MSR_WRITE X2APIC_SELF_IPI, 0x61
    MSR_WRITE X2APIC_SELF_IPI, 0x60
    WAIT_LOG %r12, 3
    movq %gs:PC_LOG_N, %rax
    subq %r12, %rax
    ASSERT_EQ %rax, $3, 0x20
    movzbl %gs:PC_LOG(%r12), %eax
    ASSERT_EQ %rax, $0x61, 0x21
    movzbl %gs:PC_LOG+1(%r12), %eax
    ASSERT_EQ %rax, $0x60, 0x22
    movzbl %gs:PC_LOG+2(%r12), %eax
    ASSERT_EQ %rax, $0x50, 0x23

    /* one in service per class: 0x60's handler lets 0x70 in, not 0x61 */
    movl $0x60, %edi
    leaq nest_hook(%rip), %rsi
    call tl_set_hook
    movq %gs:PC_LOG_N, %r12
    MSR_WRITE X2APIC_SELF_IPI, 0x60
    WAIT_LOG %r12, 3
    movq %gs:PC_LOG_N, %rax
    subq %r12, %rax
    ASSERT_EQ %rax, $3, 0x28
    movzbl %gs:PC_LOG(%r12), %eax
    ASSERT_EQ %rax, $0x60, 0x29
    movzbl %gs:PC_LOG+1(%r12), %eax
    ASSERT_EQ %rax, $0x70, 0x2a
    movzbl %gs:PC_LOG+2(%r12), %eax
    ASSERT_EQ %rax, $0x61, 0x2b
    ASSERT_EQ nest_seen(%rip), $1, 0x2c /* in 0x60's handler: 0x70 came, 0x61 not, PPR 0x60 */

    /* IPI to vCPU 1 */
1:  cmpl $0, ready1(%rip)
    je 1b
    MSR_WRITE X2APIC_ICR, ((1 << 32) | ICR_FIXED | 0x54)
1:  pause
    cmpl $0, done1(%rip)
    je 1b
    cmpl $0, %gs:PC_COUNTS+0x54*4
    je 3f
    FAIL 0x30                           /* 0x54 was for vCPU 1 only */
3:  PASS

    /* Hook of 0x60 in the nesting test: send 0x61 and 0x70, let interrupts in (sti; hlt: the
     * 0x70 wakes it), then, still with IF = 1, read PPR (an exit under apfdbg: a chance to take
     * 0x61 if the machine thought it could), then EOI. */
nest_hook:
    pushq %rbx
    pushq %r12
    movq %rsi, %rbx
    MSR_WRITE X2APIC_SELF_IPI, 0x61
    MSR_WRITE X2APIC_SELF_IPI, 0x70
    movl PC_COUNTS+0x70*4(%rbx), %r8d
    movl PC_COUNTS+0x61*4(%rbx), %r9d
    sti
    hlt
    nop
    movl $X2APIC_PPR, %ecx
    rdmsr
    cli
    movl %eax, %r12d
    movl PC_COUNTS+0x70*4(%rbx), %eax
    subl %r8d, %eax                     /* 0x70: taken */
    movl PC_COUNTS+0x61*4(%rbx), %ecx
    subl %r9d, %ecx                     /* 0x61: not yet */
    cmpl $1, %eax
    jne 1f
    testl %ecx, %ecx
    jnz 1f
    testq $QUIRK_APIC_ISR, tl_quirks(%rip)
    jnz 2f
    cmpl $0x60, %r12d                   /* PPR: the class of 0x60, in service */
    jne 1f
2:  movq $1, nest_seen(%rip)
1:  popq %r12
    popq %rbx
    jmp tl_eoi_hook

/* ---- vCPU 1 ----------------------------------------------------------------------------------- */
vcpu1:
1:  pause
    cmpl $1, ready0(%rip)
    jb 1b
    MSR_WRITE X2APIC_ICR, ((0 << 32) | ICR_FIXED | 0x50)
1:  pause
    cmpl $2, ready0(%rip)
    jb 1b
    MSR_WRITE X2APIC_ICR, (ICR_OTHERS | ICR_FIXED | 0x51)
    movl $1, ready1(%rip)
1:  cmpl $0, %gs:PC_COUNTS+0x54*4
    jne 2f
    sti
    hlt
    cli
    jmp 1b
2:  cmpl $0, %gs:PC_COUNTS+0x50*4
    je 3f
    FAIL 0x40
3:  cmpl $0, %gs:PC_COUNTS+0x51*4
    je 3f
    FAIL 0x41
3:  cmpl $1, %gs:PC_COUNTS+0x54*4
    je 3f
    FAIL 0x42
3:  movl $1, done1(%rip)
4:  cli
    hlt
    jmp 4b

    .section .data
ready0:     .long 0
ready1:     .long 0
done1:      .long 0
            .balign 8
nest_seen:  .quad 0
