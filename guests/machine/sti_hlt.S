/*
 * sti_hlt: the STI shadow and wake-ups (vCPU 0).
 *
 *  1. A self IPI made pending while IF = 0, then `sti; hlt`: the interrupt is not lost, it
 *     wakes the hlt, and the handler's saved RIP is the instruction after the hlt (had it been
 *     taken inside the STI shadow, before the hlt, the iretq would go back to the hlt and sleep
 *     for good: status 2).
 *  2. `sti; cli` with an interrupt pending: the shadow covers the cli, so it is not taken.
 *  3. A one-shot timer expiring while the vCPU spins with IF = 1 in a loop that never leaves
 *     the CPU (no hlt, no MSR, no I/O): the interrupt is taken inside the loop.
 *  4. `sti; nop` with an interrupt pending: taken right after the nop (saved RIP = after the
 *     nop), before the cli that follows.
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    MSR_WRITE X2APIC_SVR, 0x1ff
    leaq tl_eoi_hook(%rip), %rsi
    movl $0x40, %edi
1:  call tl_set_hook
    incl %edi
    cmpl $0x44, %edi
    jb 1b

    /* --- 1. sti; hlt with the interrupt already pending ------------------------------- */
    MSR_WRITE X2APIC_SELF_IPI, 0x40
    sti
    hlt
after_hlt:
    cli
    cmpl $1, %gs:PC_COUNTS+0x40*4
    je 1f
    FAIL 0x10
1:  ASSERT_EQ %gs:PC_RIP, $after_hlt, 0x11
    testl $RFLAGS_IF, %gs:PC_RFLAGS
    jnz 1f
    FAIL 0x12                           /* the saved RFLAGS has IF = 1 */

    /* --- 2. sti; cli: nothing is taken --------------------------------------------------- */
1:  MSR_WRITE X2APIC_SELF_IPI, 0x42
    sti
    cli
    cmpl $0, %gs:PC_COUNTS+0x42*4
    je 1f
    FAIL 0x20
1:  sti                                 /* now take it */
    hlt
    cli
    cmpl $1, %gs:PC_COUNTS+0x42*4
    je 1f
    FAIL 0x21

    /* --- 3. an interrupt into a loop that never exits ------------------------------------ */
1:  MSR_WRITE X2APIC_TDCR, 0xb
    MSR_WRITE X2APIC_LVT_TIMER, 0x43
    MSR_WRITE X2APIC_TMICT, 5000
    movl $100000000, %ecx
    sti
spin:
    cmpl $0, %gs:PC_COUNTS+0x43*4
    jne 2f
    decl %ecx
    jnz spin
    cli
    FAIL 0x30                           /* 3e8 instructions and no timer interrupt */
2:  cli
    movq %gs:PC_RIP, %rax               /* taken inside the loop */
    ASSERT ae, %rax, $spin, 0x31
    ASSERT b, %rax, $2b, 0x32

    /* --- 4. sti; nop: taken after the nop --------------------------------------------------- */
    SKIP_IF_QUIRK QUIRK_IRQ_WINDOW, 2f
    MSR_WRITE X2APIC_SELF_IPI, 0x41
    sti
    nop
after_nop:
    cli
    cmpl $1, %gs:PC_COUNTS+0x41*4
    je 1f
    FAIL 0x40                           /* not taken before the cli */
1:  ASSERT_EQ %gs:PC_RIP, $after_nop, 0x41
2:  PASS
