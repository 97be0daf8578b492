/*
 * hlt_if0: every vCPU stops with `cli; hlt`.  Nothing can wake a hlt with IF = 0 (only NMI,
 * SMI, INIT, reset do), not even the interrupt vCPU 0 leaves pending in its APIC, so the run
 * must end with status 2 (every vCPU stopped for good).  A vCPU that gets past its hlt fails.
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    testq %rdi, %rdi
    jnz 1f
    MSR_WRITE X2APIC_SVR, 0x1ff         /* vCPU 0: an interrupt pending, IF = 0 */
    movl $0x40, %edi
    leaq tl_eoi_hook(%rip), %rsi
    call tl_set_hook
    MSR_WRITE X2APIC_SELF_IPI, 0x40
    xorl %edi, %edi
1:  PUTS "vCPU "
    PUTDEC %rdi
    PUTS " halts with IF = 0\n"
    cli
    hlt
    PUTS "woke up from hlt with IF = 0\n"
    FAIL 0x01
