/*
 * exceptions: delivery of CPU exceptions and `int n` at CPL 0 through a 64-bit IDT.
 *
 * For each event the handler's record must show the vector, the error code (pushed only by the
 * vectors that push one), the saved RIP (the faulting instruction for faults, the next one for
 * traps and `int n`), CS = 0x08, SS = 0x10, the RSP before the event and RFLAGS; the handler
 * returns with iretq and the interrupted code goes on with RSP and its registers intact.
 *  - #DE: div by zero, and a quotient overflow;
 *  - #UD: ud2;
 *  - #BP: int3 (a trap: RIP after it), also as `int $3`;
 *  - #GP(selector) from segment loads: DS <- 0x2b (a TSS descriptor), DS <- 0xff8 (beyond the
 *    GDT limit), SS <- 0x1b (RPL != CPL); the segment register keeps its old value;
 *  - `int $0x80` through a DPL 3 gate and `int $0x81` through a DPL 0 gate (CPL 0 may use both);
 *  - #NP(0x82 * 8 + 2) for `int $0x82` through a not-present gate (IDT bit set, EXT clear);
 *  - interrupt gate vs trap gate: with IF = 1, the handler runs with IF = 0 behind an interrupt
 *    gate and with IF = 1 behind a trap gate; iretq restores IF = 1 either way;
 *  - an interrupt at the same privilege through a gate naming another code segment loads CS but
 *    not SS: it is delivered while SS's GDT entry is not present (found by the fuzzer: apfdbg
 *    re-read that entry and failed).
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movl $0x80, %edi
    movl $GATE_INT_USER, %esi
    xorl %edx, %edx
    call tl_set_gate                    /* int 0x80: DPL 3 interrupt gate */
    movl $0x82, %edi
    movl $GATE_NOT_PRESENT, %esi
    call tl_set_gate                    /* int 0x82: not present */

    /* --- #DE ------------------------------------------------------------------------ */
    EXPECT 1f
    movq %rsp, saved_rsp(%rip)
    movl $1, %eax
    xorl %edx, %edx
    xorl %ecx, %ecx
de_div0:
    divl %ecx
    FAIL 0x10
1:  CHECK_EXC EXC_DE, 0, de_div0, KERNEL_CS, 0x10
    movl $RFLAGS_RF, %r10d
    call check_frame
    ASSERT_EQ %rax, $1, 0x15            /* registers as they were at the fault */
    ASSERT_EQ %rdx, $0, 0x16
    EXPECT 1f
    movl $2, %edx                       /* 0x2_0000_0000 / 1 does not fit in 32 bits */
    xorl %eax, %eax
    movl $1, %ecx
de_overflow:
    divl %ecx
    FAIL 0x18
1:  CHECK_EXC EXC_DE, 0, de_overflow, KERNEL_CS, 0x18

    /* --- #UD ------------------------------------------------------------------------ */
    EXPECT 1f
    movq %rsp, saved_rsp(%rip)
ud_ud2:
    ud2
    FAIL 0x20
1:  CHECK_EXC EXC_UD, 0, ud_ud2, KERNEL_CS, 0x20
    movl $RFLAGS_RF, %r10d
    call check_frame

    /* --- #BP: a trap, RIP after the int3 ------------------------------------------------ */
    EXPECT bp_after
    movq %rsp, saved_rsp(%rip)
    int3
bp_after:
    CHECK_EXC EXC_BP, 0, bp_after, KERNEL_CS, 0x28
    xorl %r10d, %r10d
    call check_frame
    EXPECT bp2_after
    .byte 0xcd, 0x03                    /* int $3, the two-byte form */
bp2_after:
    CHECK_EXC EXC_BP, 0, bp2_after, KERNEL_CS, 0x2c

    /* --- #GP from segment loads: error code = selector (RPL bits clear) ------------- */
    EXPECT 1f
    movq %rsp, saved_rsp(%rip)
    movl $0x2b, %eax                    /* TSS descriptor of vCPU 0, RPL 3: not a data segment */
gp_tss:
    movw %ax, %ds
    FAIL 0x30
1:  CHECK_EXC EXC_GP, 0x28, gp_tss, KERNEL_CS, 0x30
    movl $RFLAGS_RF, %r10d
    call check_frame
    movl %ds, %eax
    ASSERT_EQ %rax, $KERNEL_DS, 0x35     /* DS unchanged */
    EXPECT 1f
    movl $0xff8, %eax                   /* beyond the GDT limit */
gp_limit:
    movw %ax, %ds
    FAIL 0x38
1:  CHECK_EXC EXC_GP, 0xff8, gp_limit, KERNEL_CS, 0x38
    EXPECT 1f
    movl $USER_DS, %eax                 /* SS needs RPL = DPL = CPL */
gp_ss:
    movw %ax, %ss
    FAIL 0x40
1:  CHECK_EXC EXC_GP, 0x18, gp_ss, KERNEL_CS, 0x40
    movl %ss, %eax
    ASSERT_EQ %rax, $KERNEL_DS, 0x45

    /* --- int n through DPL 3 and DPL 0 gates, and a not-present one ----------------- */
    EXPECT int80_after
    movq %rsp, saved_rsp(%rip)
    int $0x80
int80_after:
    CHECK_EXC 0x80, 0, int80_after, KERNEL_CS, 0x48
    xorl %r10d, %r10d
    call check_frame
    EXPECT int81_after
    int $0x81
int81_after:
    CHECK_EXC 0x81, 0, int81_after, KERNEL_CS, 0x50
    EXPECT 1f
int82:
    int $0x82
    FAIL 0x58
1:  CHECK_EXC EXC_NP, (0x82*8+2), int82, KERNEL_CS, 0x58
    cmpl $0, %gs:PC_COUNTS+0x82*4
    je 1f
    FAIL 0x5d
1:

    /* --- interrupt gate vs trap gate ------------------------------------------------ */
    sti                                 /* nothing can interrupt: the APIC is off */
    EXPECT 1f
    int $0x80
1:  CHECK_EXC 0x80, 0, 1b, KERNEL_CS, 0x60
    testl $RFLAGS_IF, %gs:PC_HFLAGS
    jz 2f
    FAIL 0x65                           /* interrupt gate: IF must be 0 in the handler */
2:  testl $RFLAGS_IF, %gs:PC_RFLAGS
    jnz 2f
    FAIL 0x66                           /* the saved RFLAGS has IF = 1 */
2:  pushfq
    popq %rax
    testl $RFLAGS_IF, %eax
    jnz 2f
    FAIL 0x67                           /* iretq restored IF = 1 */
2:  movl $0x80, %edi
    movl $GATE_TRAP_USER, %esi
    xorl %edx, %edx
    call tl_set_gate                    /* now a trap gate */
    EXPECT 1f
    int $0x80
1:  CHECK_EXC 0x80, 0, 1b, KERNEL_CS, 0x68
    testl $RFLAGS_IF, %gs:PC_HFLAGS
    jnz 2f
    FAIL 0x6d                           /* trap gate: IF stays 1 in the handler */
2:  cli
    EXPECT 1f
    int $0x80
1:  CHECK_EXC 0x80, 0, 1b, KERNEL_CS, 0x70
    testl $RFLAGS_IF, %gs:PC_HFLAGS
    jz 2f
    FAIL 0x75                           /* trap gate with IF = 0: still 0 */
2:  pushfq
    popq %rax
    testl $RFLAGS_IF, %eax
    jz 2f
    FAIL 0x76
2:
    ASSERT_EQ %gs:PC_COUNT, $14, 0x7d   /* nothing else was delivered */

    /* --- same privilege, another code segment: CS is loaded, SS is not, so SS's GDT entry may
     * be anything (a copy of the boot GDT with a second kernel code segment, SS's entry zeroed) */
    sgdt gdtr_buf(%rip)
    movzwl gdtr_buf(%rip), %ecx
    incl %ecx                           /* bytes in the boot GDT */
    movq gdtr_buf+2(%rip), %rsi
    leaq my_gdt(%rip), %rdi
    rep movsb                           /* RDI: just past the copy, the new entry */
    movq my_gdt+KERNEL_CS(%rip), %rax
    movq %rax, (%rdi)
    leaq my_gdt(%rip), %rax
    subq %rax, %rdi
    movq %rdi, %r14                     /* the second code segment's selector */
    leal 7(%r14), %eax
    movw %ax, my_gdtr(%rip)
    leaq my_gdt(%rip), %rax
    movq %rax, my_gdtr+2(%rip)
    lgdt my_gdtr(%rip)
    sidt idtr_buf(%rip)
    movq idtr_buf+2(%rip), %rax
    movw %r14w, 0x83*16+2(%rax)         /* int $0x83: its handler runs in that segment */
    movq my_gdt+KERNEL_DS(%rip), %r12
    movq $0, my_gdt+KERNEL_DS(%rip)     /* SS's descriptor: not present */
    movq %rsp, %r13
    EXPECT_JMP ss_int_after, %r13       /* the handler drops its frame: no iretq (it loads SS) */
    int $0x83
ss_int_after:
    movq %r12, my_gdt+KERNEL_DS(%rip)
    pushq $KERNEL_CS                    /* back to the boot code segment and GDT */
    leaq 5f(%rip), %rax
    pushq %rax
    lretq
5:  lgdt gdtr_buf(%rip)
    movq idtr_buf+2(%rip), %rax
    movw $KERNEL_CS, 0x83*16+2(%rax)
    CHECK_EXC 0x83, 0, ss_int_after, KERNEL_CS, 0x80
    ASSERT_EQ %gs:PC_HCS, %r14, 0x85
    ASSERT_EQ %gs:PC_SS, $KERNEL_DS, 0x86
    ASSERT_EQ %gs:PC_HSS, $KERNEL_DS, 0x87
    cmpq $0, rf_bad(%rip)
    je 3f
    PUTS "wrong RFLAGS.RF in the frame of vector "
    PUTHEX rf_bad_vector(%rip)
    PUTS "\n"
    FAIL 0x7f
3:  PASS

    /* The last event's frame: SS = 0x10, RSP = saved_rsp, RFLAGS = what pushfq gives now apart
     * from the arithmetic flags and RF, and the handler's own CS/SS.  RF (bit 16) must be 1 in
     * the saved RFLAGS of a fault and 0 for traps and int n (r10 = the expected RF); a wrong RF is
     * only noted here and fails the run at the end (0x7f), so that the other checks still run. */
check_frame:
    pushq %rax
    ASSERT_EQ %gs:PC_SS, $KERNEL_DS, 0x78
    movq saved_rsp(%rip), %rax
    ASSERT_EQ %gs:PC_RSP, %rax, 0x79
    pushfq
    popq %rax
    xorq %gs:PC_RFLAGS, %rax
    testl $~(0x8d5 | RFLAGS_RF), %eax   /* everything but CF PF AF ZF SF OF and RF equal */
    jz 1f
    FAIL 0x7a
1:  ASSERT_EQ %gs:PC_HCS, $KERNEL_CS, 0x7b
    ASSERT_EQ %gs:PC_HSS, $KERNEL_DS, 0x7c
    movq %gs:PC_RFLAGS, %rax
    andl $RFLAGS_RF, %eax
    cmpq %r10, %rax
    je 2f
    cmpq $0, rf_bad(%rip)
    jne 2f
    movq %gs:PC_VECTOR, %rax
    movq %rax, rf_bad_vector(%rip)
    movq $1, rf_bad(%rip)
2:  popq %rax
    ret

    .section .data
gdtr_buf:
    .zero 10
idtr_buf:
    .zero 10
my_gdtr:
    .zero 10
    .balign 8
my_gdt:
    .zero 4096
saved_rsp:
    .quad 0
rf_bad:
    .quad 0
rf_bad_vector:
    .quad 0
