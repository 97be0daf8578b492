/*
 * usermode: CPL 3 and the ways back to CPL 0 (vCPU 0, guest paging off).
 *
 *  - iretq to CPL 3 code (CS 0x23, SS 0x1b): CS, SS, RSP and RFLAGS are what the frame said;
 *  - syscall (EFER.SCE, STAR = (0x10 << 48) | (0x08 << 32), LSTAR, FMASK = IF | DF | TF): the
 *    kernel entry runs at CPL 0 with CS 0x08, SS 0x10, RCX = the user RIP after syscall,
 *    R11 = the user RFLAGS (RF clear), RFLAGS = user RFLAGS & ~FMASK, RSP unchanged; sysretq
 *    returns to RCX at CPL 3 with CS 0x23, SS 0x1b and RFLAGS = R11;
 *  - int 0x80 through a DPL 3 gate from CPL 3: the handler runs at CPL 0 on TSS.RSP0 aligned
 *    down to 16 (RSP0 is set misaligned on purpose), SS = the null selector, and the frame holds
 *    SS 0x1b, the user RSP, RFLAGS, CS 0x23 and the RIP after the int; iretq goes back to CPL 3;
 *  - int 0x81 through a DPL 0 gate from CPL 3: #GP(0x81 * 8 + 2), saved RIP = the int, CS 0x23;
 *  - int3 through a DPL 0 gate from CPL 3: #GP(3 * 8 + 2);
 *  - at CPL 3 with IOPL 0: cli, hlt, out to 0xe9, rdmsr, mov from CR0 -> #GP(0) each, and the
 *    console gets nothing from the out.
 * (A user-mode page fault needs paging: it is in the `paging` guest.)
 */
    .include "testlib.inc"

    .set USER_RIP_INT80, 0

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movl $0x80, %edi
    movl $GATE_INT_USER, %esi
    xorl %edx, %edx
    call tl_set_gate                    /* int 0x80: DPL 3; 0x81 and 3 stay DPL 0 */
    movl $0x80, %edi
    leaq int80_hook(%rip), %rsi
    call tl_set_hook

    /* TSS.RSP0 of vCPU 0 (the boot TSS): a kernel stack, 8 bytes off 16-byte alignment. */
    leaq kstack_top(%rip), %rax
    subq $8, %rax
    movq %rax, TSS_BASE + TSS_RSP0

    /* SYSCALL setup. */
    MSR_READ MSR_EFER
    orl $EFER_SCE, %eax
    MSR_WRITE_REG MSR_EFER, %rax
    MSR_WRITE MSR_STAR, 0x0010000800000000
    leaq syscall_entry(%rip), %rax
    MSR_WRITE_REG MSR_LSTAR, %rax
    MSR_WRITE MSR_FMASK, (RFLAGS_IF | RFLAGS_DF | RFLAGS_TF)

    /* Off to CPL 3.  The kernel comes back at `kernel_again` (from a syscall with RAX = 99). */
    movq %rsp, kernel_rsp(%rip)
    leaq user_main(%rip), %rdi
    leaq ustack_top(%rip), %rsi
    movl $(RFLAGS_FIXED | RFLAGS_IF), %edx   /* IF = 1 at CPL 3: nothing can interrupt */
    call tl_enter_user
    FAIL 0x01

kernel_again:
    movq kernel_rsp(%rip), %rsp
    SKIP_IF_QUIRK QUIRK_SYSCALL, 1f
    ASSERT_EQ syscalls(%rip), $2, 0x02
1:  SKIP_IF_QUIRK QUIRK_USER_INT, 1f
    ASSERT_EQ int80s(%rip), $1, 0x03
1:
    xorl %eax, %eax
    movw %cs, %ax
    ASSERT_EQ %rax, $KERNEL_CS, 0x04
    PASS

/* ---- CPL 0 side ---------------------------------------------------------------------------- */
syscall_entry:
    /* Nothing may touch the flags before they are looked at. */
    pushfq                              /* (on the user stack: syscall does not switch it) */
    popq %r12
    incq syscalls(%rip)
    SKIP_IF_QUIRK QUIRK_USER_SEGS, 1f
    xorl %eax, %eax
    movw %cs, %ax
    ASSERT_EQ %rax, $KERNEL_CS, 0x10
    movw %ss, %ax
    ASSERT_EQ %rax, $KERNEL_DS, 0x11
1:
    ASSERT_EQ %rcx, user_syscall_ret(%rip), 0x12  /* RCX = the user RIP after syscall */
    ASSERT_EQ %r11, user_rflags(%rip), 0x13       /* R11 = the user RFLAGS */
    movq user_rflags(%rip), %rax
    andq $~(RFLAGS_IF | RFLAGS_DF | RFLAGS_TF | RFLAGS_RF), %rax
    ASSERT_EQ %r12, %rax, 0x14          /* RFLAGS = user RFLAGS & ~FMASK */
    ASSERT_EQ %rsp, user_rsp(%rip), 0x15 /* RSP untouched */
    cmpq $99, %rbx
    je kernel_again
    movq $0x5a5a, %rdx                  /* the user side checks it comes back */
    sysretq

    /* int 0x80 from CPL 3: count it, note the handler's stack and SS. */
int80_hook:                             /* rdi = frame, rsi = per-vCPU area */
    incq int80s(%rip)
    movq PC_ENTRY_RSP(%rsi), %rax
    movq %rax, int80_entry_rsp(%rip)
    movq PC_HSS(%rsi), %rax
    movq %rax, int80_hss(%rip)
    movq PC_HCS(%rsi), %rax
    movq %rax, int80_hcs(%rip)
    movq $0x8080, F_RAX(%rdi)           /* the user side sees RAX changed by the handler */
    ret

/* ---- CPL 3 side ---------------------------------------------------------------------------- */
user_main:
    pushfq
    popq %rax
    ASSERT_EQ %rax, $(RFLAGS_FIXED | RFLAGS_IF), 0x20   /* RFLAGS from the iretq frame */
    SKIP_IF_QUIRK QUIRK_USER_SEGS, 1f
    xorl %eax, %eax
    movw %cs, %ax
    ASSERT_EQ %rax, $USER_CS, 0x21
    movw %ss, %ax
    ASSERT_EQ %rax, $USER_DS, 0x22
1:
    leaq ustack_top(%rip), %rax
    ASSERT_EQ %rsp, %rax, 0x23

    /* --- syscall / sysretq ------------------------------------------------------- */
    SKIP_IF_QUIRK QUIRK_SYSCALL, user_int80
    xorl %ebx, %ebx
    xorl %edx, %edx
    leaq user_after_syscall(%rip), %rax
    movq %rax, user_syscall_ret(%rip)
    movq %rsp, user_rsp(%rip)
    std                                 /* DF = 1: FMASK must clear it for the kernel */
    pushfq                              /* no flag changes from here to the syscall */
    popq %rax
    movq %rax, user_rflags(%rip)
    syscall
user_after_syscall:
    pushfq
    popq %rax
    cld
    ASSERT_EQ %rax, user_rflags(%rip), 0x30   /* RFLAGS = R11 = what it was */
    ASSERT_EQ %rdx, $0x5a5a, 0x31
    SKIP_IF_QUIRK QUIRK_USER_SEGS, 1f
    xorl %eax, %eax
    movw %cs, %ax
    ASSERT_EQ %rax, $USER_CS, 0x32
    movw %ss, %ax
    ASSERT_EQ %rax, $USER_DS, 0x33
1:

    /* --- int 0x80 through the DPL 3 gate ----------------------------------------- */
user_int80:
    SKIP_IF_QUIRK QUIRK_USER_INT, user_priv
    movq %rsp, user_rsp(%rip)
    movl $0x1234, %eax
    int $0x80
user_after_int80:
    ASSERT_EQ %rax, $0x8080, 0x40       /* the handler ran and changed the saved RAX */
    ASSERT_EQ int80s(%rip), $1, 0x41
    ASSERT_EQ %gs:PC_VECTOR, $0x80, 0x42
    ASSERT_EQ %gs:PC_RIP, $user_after_int80, 0x43
    ASSERT_EQ %gs:PC_CS, $USER_CS, 0x44
    ASSERT_EQ %gs:PC_SS, $USER_DS, 0x45
    movq user_rsp(%rip), %rax
    ASSERT_EQ %gs:PC_RSP, %rax, 0x46
    leaq kstack_top(%rip), %rax         /* RSP0 = top - 8, aligned down: top - 16, less 5 words */
    subq $(16 + 40), %rax
    ASSERT_EQ int80_entry_rsp(%rip), %rax, 0x47
    movq int80_hss(%rip), %rax
    testq $~3, %rax
    jz 1f
    FAIL 0x48                           /* SS in the handler: the null selector */
1:  ASSERT_EQ int80_hcs(%rip), $KERNEL_CS, 0x49
    testl $RFLAGS_IF, %gs:PC_RFLAGS
    jnz 1f
    FAIL 0x4a                           /* the saved RFLAGS has the user's IF = 1 */
1:  SKIP_IF_QUIRK QUIRK_USER_SEGS, 1f
    xorl %eax, %eax
    movw %ss, %ax
    ASSERT_EQ %rax, $USER_DS, 0x4b      /* back at CPL 3 with the user SS */
1:
    ASSERT_EQ %rsp, user_rsp(%rip), 0x4c

    /* --- int 0x81 (DPL 0 gate) and int3 (DPL 0 gate) from CPL 3: #GP -------------------- */
    EXPECT 1f
u_int81:
    int $0x81
    FAIL 0x50
1:  CHECK_EXC EXC_GP, (0x81*8+2), u_int81, USER_CS, 0x50
    ASSERT_EQ %gs:PC_SS, $USER_DS, 0x55
    cmpl $0, %gs:PC_COUNTS+0x81*4
    je 1f
    FAIL 0x56
1:  EXPECT 1f
u_int3:
    int3
    FAIL 0x58
1:  CHECK_EXC EXC_GP, (3*8+2), u_int3, USER_CS, 0x58

    /* --- privileged at CPL 3 --------------------------------------------------------- */
user_priv:
    EXPECT 1f
u_cli:
    cli
    FAIL 0x60
1:  CHECK_EXC EXC_GP, 0, u_cli, USER_CS, 0x60
    pushfq
    popq %rax
    testl $RFLAGS_IF, %eax
    jnz 1f
    FAIL 0x65                           /* cli did not happen */
1:  EXPECT 1f
u_hlt:
    hlt
    FAIL 0x68
1:  CHECK_EXC EXC_GP, 0, u_hlt, USER_CS, 0x68
    EXPECT 1f
    movb $'!', %al
u_out:
    outb %al, $PORT_CONSOLE
    FAIL 0x70
1:  CHECK_EXC EXC_GP, 0, u_out, USER_CS, 0x70
    EXPECT 1f
    movl $MSR_LSTAR, %ecx
u_rdmsr:
    rdmsr
    FAIL 0x78
1:  CHECK_EXC EXC_GP, 0, u_rdmsr, USER_CS, 0x78
    EXPECT 1f
u_movcr:
    movq %cr0, %rax
    FAIL 0x80
1:  CHECK_EXC EXC_GP, 0, u_movcr, USER_CS, 0x80

    /* --- back to the kernel for good ------------------------------------------------- */
    testq $QUIRK_SYSCALL, tl_quirks(%rip)
    jz 2f
    movq kernel_rsp(%rip), %rax         /* no syscall on this host: through a #GP instead */
    EXPECT_JMP kernel_again, %rax
    int $0x81
    FAIL 0x89
2:
    movq %rsp, user_rsp(%rip)
    pushfq
    popq %rax
    movq %rax, user_rflags(%rip)
    leaq 1f(%rip), %rax
    movq %rax, user_syscall_ret(%rip)
    movl $99, %ebx
    syscall
1:  FAIL 0x88

    .section .data
    .balign 8
kernel_rsp:         .quad 0
user_rsp:           .quad 0
user_rflags:        .quad 0
user_syscall_ret:   .quad 0
syscalls:           .quad 0
int80s:             .quad 0
int80_entry_rsp:    .quad 0
int80_hss:          .quad -1
int80_hcs:          .quad 0

    .section .bss
    .balign 4096
    .skip 4096
kstack_top:
    .skip 4096
ustack_top:
