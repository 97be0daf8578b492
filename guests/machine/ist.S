/*
 * ist: Interrupt Stack Table stacks and the double fault (vCPU 0).
 *
 *  1. int 0x80 through a gate with IST 2 at CPL 0: the handler runs on IST2 aligned down to 16
 *     (IST2 is set 8 bytes off on purpose), although the CPL does not change.
 *  2. #GP whose gate is not present: delivering the #GP raises #NP (contributory on
 *     contributory), so the CPU delivers #DF (error code 0) instead, through the #DF gate's IST 1:
 *     the handler runs on IST1 - 48 (5 words and the error code); no #GP or #NP handler runs.
 *  3. From CPL 3, int 0x80 (DPL 3 gate, no IST) while TSS.RSP0 is non-canonical: the stack switch
 *     faults (#SS), delivering that #SS needs RSP0 too and faults again -> #DF on IST 1.
 *  4. #GP whose gate has IST 3 = 0x0000800000000000: the SDM checks the stack address loaded
 *     from the TSS ("IF StackAddress is non-canonical THEN #SS(0)"), although every byte of the
 *     frame below it would be canonical: #SS while delivering #GP -> #DF on IST 1.
 * The #DF handler never returns (the SDM leaves the saved CS:RIP of #DF undefined): it drops
 * its frame and continues on a known stack.  The run passes after exactly 3 double faults (and 4 events in all).
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    /* IST1 (#DF), IST2, IST3 in the boot TSS of vCPU 0. */
    leaq df_stack_top(%rip), %rax
    movq %rax, TSS_BASE + TSS_IST1
    leaq ist2_stack_top(%rip), %rax
    subq $8, %rax
    movq %rax, TSS_BASE + TSS_IST1 + 8
    movabsq $0x0000800000000000, %rax   /* non-canonical */
    movq %rax, TSS_BASE + TSS_IST1 + 16
    movl $EXC_DF, %edi
    movl $GATE_INT, %esi
    movl $1, %edx
    call tl_set_gate                    /* #DF: IST 1 */

    /* --- 1. IST at CPL 0 -------------------------------------------------------------- */
    movl $0x80, %edi
    movl $GATE_INT_USER, %esi
    movl $2, %edx
    call tl_set_gate
    EXPECT 1f
    movq %rsp, %rbx
    int $0x80
1:  CHECK_EXC 0x80, 0, 1b, KERNEL_CS, 0x10
    leaq ist2_stack_top(%rip), %rax     /* IST2 = top - 8 -> top - 16, then 5 words */
    subq $(16 + 40), %rax
    ASSERT_EQ %gs:PC_ENTRY_RSP, %rax, 0x15
    ASSERT_EQ %gs:PC_RSP, %rbx, 0x16    /* the old RSP is in the frame */
    ASSERT_EQ %gs:PC_SS, $KERNEL_DS, 0x17
    ASSERT_EQ %rsp, %rbx, 0x18          /* and iretq went back to it */
    movl $0x80, %edi                    /* no IST from here on */
    movl $GATE_INT_USER, %esi
    xorl %edx, %edx
    call tl_set_gate

    /* --- 2. #GP -> #NP (gate not present) -> #DF ------------------------------------ */
    movl $EXC_GP, %edi
    movl $GATE_NOT_PRESENT, %esi
    xorl %edx, %edx
    call tl_set_gate
    movq %rsp, %rbx
    EXPECT_JMP 2f, %rbx
    movl $0x2b, %eax
    movw %ax, %ds                       /* #GP(0x28) */
    FAIL 0x20
2:  call check_df
    ASSERT_EQ %gs:PC_COUNT, $2, 0x21    /* int 0x80 and this #DF: no #GP, no #NP */

    /* --- 3. CPL 3, int 0x80 with a non-canonical RSP0 -> #SS -> #SS -> #DF ----------- */
    movabsq $0xdead000000000000, %rax   /* non-canonical, and so is every byte below it */
    movq %rax, TSS_BASE + TSS_RSP0
    movq %rsp, %rbx
    EXPECT_JMP 3f, %rbx
    leaq user_code(%rip), %rdi
    leaq ustack_top(%rip), %rsi
    movl $RFLAGS_FIXED, %edx
    call tl_enter_user
3:  call check_df
    ASSERT_EQ %gs:PC_COUNT, $3, 0x30
    ASSERT_EQ %gs:PC_CS, $USER_CS, 0x31 /* (in practice the #DF frame is the user's) */
    cmpl $0, %gs:PC_COUNTS+EXC_SS*4
    je 5f
    FAIL 0x32                           /* no #SS handler ran */
5:  leaq kstack_top(%rip), %rax         /* a good RSP0 again */
    movq %rax, TSS_BASE + TSS_RSP0

    /* --- 4. #GP with IST 3 = 0x0000800000000000 -> #SS(0) -> #DF ----------------------
     * The SDM checks the stack address loaded from the TSS ("IF StackAddress is
     * non-canonical THEN #SS(0)"), not only the bytes pushed: here every byte of the frame
     * (just below 2^47) is canonical, the loaded RSP is not. */
    movl $EXC_GP, %edi
    movl $GATE_INT, %esi
    movl $3, %edx
    call tl_set_gate
    movq %rsp, %rbx
    EXPECT_JMP 4f, %rbx
    movl $0x2b, %eax
    movw %ax, %ds
    FAIL 0x40
4:  call check_df
    ASSERT_EQ %gs:PC_COUNT, $4, 0x41
    ASSERT_EQ %gs:PC_COUNTS+EXC_DF*4, $3, 0x43
    PASS

user_code:
    int $0x80
    FAIL 0x48                           /* (tl_fail at CPL 3 needs a working #UD: it has one) */

    /* The last event was a #DF with error code 0, taken on IST 1 (df_stack_top - 48), CPL 0. */
check_df:
    ASSERT_EQ %gs:PC_VECTOR, $EXC_DF, 0x50
    ASSERT_EQ %gs:PC_ERROR, $0, 0x51
    leaq df_stack_top(%rip), %rax
    subq $48, %rax
    ASSERT_EQ %gs:PC_ENTRY_RSP, %rax, 0x52
    ASSERT_EQ %gs:PC_HCS, $KERNEL_CS, 0x53
    cmpq $0, %gs:PC_RESUME
    je 1f
    FAIL 0x54
1:  cmpl $0, %gs:PC_COUNTS+EXC_GP*4
    je 1f
    FAIL 0x55                           /* a #GP handler ran */
1:  cmpl $0, %gs:PC_COUNTS+EXC_NP*4
    je 1f
    FAIL 0x56                           /* a #NP handler ran */
1:  ret

    .section .bss
    .balign 4096
    .skip 4096
df_stack_top:
    .skip 4096
ist2_stack_top:
    .skip 4096
ustack_top:
    .skip 4096
kstack_top:
