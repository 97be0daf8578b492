/*
 * apic_timer: the x2APIC timer (vCPU 0).  Under apfdbg the timer counts retired instructions
 * (divided by the divide configuration) and RDTSC is the instruction count, so the RDTSC distance
 * between timer interrupts is about the initial count (bounds are loose: +1/8 + 300).
 *
 *  - SVR = 0x1ff (software enable, spurious vector 0xff), TDCR = 0xb (divide by 1),
 *    LVT timer = 0x40: the registers read back;
 *  - one-shot, initial count N: the current count (0x839) goes down, one interrupt 0x40
 *    arrives while the vCPU sleeps in `sti; hlt` (saved RIP = after the hlt), RDTSC distance
 *    from arming in [N, N + N/8 + 300], the current count is 0 after it and no second one comes;
 *  - periodic (LVT bit 17): at least 4 ticks, each RDTSC distance within N +- N/8; writing 0 to
 *    the initial count stops it;
 *  - divide by 2 (TDCR 0) and by 128 (TDCR 0xa): one-shot distance about N * divisor;
 *  - a masked LVT timer counts down to 0 without an interrupt;
 *  - EOI with a non-zero value -> #GP(0) (x2APIC).
 */
    .include "testlib.inc"

    .set N, 50000
    .set VEC, 0x40

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movl $VEC, %edi
    leaq timer_hook(%rip), %rsi
    call tl_set_hook

    MSR_WRITE X2APIC_SVR, 0x1ff
    MSR_READ X2APIC_SVR
    ASSERT_EQ %rax, $0x1ff, 0x10
    MSR_WRITE X2APIC_TDCR, 0xb
    MSR_READ X2APIC_TDCR
    ASSERT_EQ %rax, $0xb, 0x11
    MSR_WRITE X2APIC_LVT_TIMER, VEC
    MSR_READ X2APIC_LVT_TIMER
    ASSERT_EQ %rax, $VEC, 0x12

    /* --- one-shot --------------------------------------------------------------------- */
    RDTSC64
    movq %rax, %r12                     /* t0 */
    MSR_WRITE X2APIC_TMICT, N
    MSR_READ X2APIC_TMCCT
    movq %rax, %r13
    ASSERT be, %r13, $N, 0x13
    ASSERT a, %r13, $0, 0x14
    movl $100, %ecx
1:  decl %ecx
    jnz 1b
    MSR_READ X2APIC_TMCCT
    ASSERT b, %rax, %r13, 0x15          /* it counts down */
1:  cmpq $0, ticks(%rip)                /* sleep until the interrupt */
    jne 2f
    sti
    hlt
after_hlt:
    cli
    jmp 1b
2:  ASSERT_EQ ticks(%rip), $1, 0x16
    ASSERT_EQ %gs:PC_RIP, $after_hlt, 0x17
    SKIP_IF_QUIRK QUIRK_HOST_TSC, 3f
    movq tick_tsc(%rip), %rax
    subq %r12, %rax
    ASSERT ae, %rax, $N, 0x18
    ASSERT be, %rax, $(N + N / 8 + 300), 0x19
3:  MSR_READ X2APIC_TMCCT
    ASSERT_EQ %rax, $0, 0x1a
    sti                                 /* no second interrupt in one-shot mode */
    movl $(3 * N / 2), %ecx
1:  decl %ecx
    jnz 1b
    cli
    ASSERT_EQ ticks(%rip), $1, 0x1b

    /* --- periodic -------------------------------------------------------------------- */
    movq $0, ticks(%rip)
    MSR_WRITE X2APIC_LVT_TIMER, (VEC | APIC_TIMER_PERIODIC)
    RDTSC64
    movq %rax, %r12
    MSR_WRITE X2APIC_TMICT, N
1:  cmpq $4, ticks(%rip)
    jae 2f
    sti
    hlt
    cli
    jmp 1b
2:  MSR_WRITE X2APIC_TMICT, 0           /* stop */
    movq ticks(%rip), %rbx
    SKIP_IF_QUIRK QUIRK_HOST_TSC, 3f
    movq tick_tsc(%rip), %rax           /* first tick: N after arming */
    subq %r12, %rax
    ASSERT ae, %rax, $N, 0x20
    ASSERT be, %rax, $(N + N / 8 + 300), 0x21
    xorl %ecx, %ecx                     /* then every N */
4:  leaq tick_tsc(%rip), %rdx
    movq 8(%rdx, %rcx, 8), %rax
    subq (%rdx, %rcx, 8), %rax
    ASSERT ae, %rax, $(N - N / 8), 0x22
    ASSERT be, %rax, $(N + N / 8), 0x23
    incl %ecx
    cmpl $3, %ecx
    jb 4b
3:  sti                                 /* stopped: no more ticks */
    movl $(3 * N / 2), %ecx
1:  decl %ecx
    jnz 1b
    cli
    ASSERT_EQ ticks(%rip), %rbx, 0x24

    /* --- divide configuration ---------------------------------------------------------- */
    MSR_WRITE X2APIC_LVT_TIMER, VEC
    MSR_WRITE X2APIC_TDCR, 0            /* divide by 2 */
    movl $2, %edi
    movl $(N / 2), %esi
    call one_shot
    ASSERT ae, %rax, $N, 0x30
    ASSERT be, %rax, $(N + N / 8 + 300), 0x31
    MSR_WRITE X2APIC_TDCR, 0xa          /* divide by 128 */
    movl $128, %edi
    movl $(N / 128), %esi
    call one_shot
    ASSERT ae, %rax, $(N / 128 * 128), 0x32
    ASSERT be, %rax, $(N + N / 8 + 300), 0x33
    MSR_WRITE X2APIC_TDCR, 0xb

    /* --- masked: counts, no interrupt ----------------------------------------------------- */
    movq ticks(%rip), %rbx
    movq %gs:PC_COUNT, %r13
    MSR_WRITE X2APIC_LVT_TIMER, (VEC | APIC_LVT_MASKED)
    MSR_WRITE X2APIC_TMICT, 1000
    sti
    movl $1000000, %r12d
1:  MSR_READ X2APIC_TMCCT
    testq %rax, %rax
    jz 2f
    decl %r12d
    jnz 1b
    FAIL 0x38                           /* never reached 0 */
2:  nop
    cli
    ASSERT_EQ ticks(%rip), %rbx, 0x39
    ASSERT_EQ %gs:PC_COUNT, %r13, 0x3a  /* nothing else was delivered either */

    /* --- EOI must be written with 0 ------------------------------------------------------- */
    SKIP_IF_QUIRK QUIRK_KVM_EOI, 2f
    EXPECT 1f
    movl $X2APIC_EOI, %ecx
    movl $1, %eax
    xorl %edx, %edx
eoi_nonzero:
    wrmsr
    FAIL 0x40
1:  CHECK_EXC EXC_GP, 0, eoi_nonzero, KERNEL_CS, 0x40
2:  PASS

    /* One-shot with divisor edi and count esi: rax = RDTSC distance to the interrupt
     * (or exactly count * divisor when RDTSC is the host's clock: nothing to measure). */
one_shot:
    pushq %rbx
    pushq %r12
    movq ticks(%rip), %rbx
    imull %esi, %edi
    movl %edi, %r12d                    /* what to report under QUIRK_HOST_TSC */
    pushq %r12
    RDTSC64
    movq %rax, %r12
    MSR_WRITE_REG X2APIC_TMICT, %rsi
1:  cmpq %rbx, ticks(%rip)
    jne 2f
    sti
    hlt
    cli
    jmp 1b
2:  movq ticks(%rip), %rcx
    decq %rcx
    leaq tick_tsc(%rip), %rdx
    movq (%rdx, %rcx, 8), %rax
    subq %r12, %rax
    popq %rdx
    SKIP_IF_QUIRK QUIRK_HOST_TSC, 3f
    jmp 4f
3:  movq %rdx, %rax
4:  popq %r12
    popq %rbx
    ret

timer_hook:                             /* rdi = frame, rsi = per-vCPU area */
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq ticks(%rip), %rcx
    cmpq $16, %rcx
    jae 1f
    leaq tick_tsc(%rip), %rdx
    movq %rax, (%rdx, %rcx, 8)
1:  incq ticks(%rip)
    jmp tl_eoi_hook

    .section .data
ticks:
    .quad 0
tick_tsc:
    .fill 16, 8, 0
