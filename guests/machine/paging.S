/*
 * paging: 4-level paging built by the guest (vCPU 0).
 *
 * Identity map: 0-2 MiB with 4 KiB pages, 2-16 MiB with 2 MiB pages, all user-accessible.
 * Test pages at TEST = 0x40000000 (4 KiB pages in PT_T) and a 2 MiB page at TEST + 2 MiB.
 * CR4.PAE, CR3, then CR0.PG | WP; EFER.NXE.  Then:
 *  - the walk sets Accessed on every level it uses and Dirty on the leaf only when it writes:
 *    a read leaves D = 0, a later write to the same (cached) page sets it; also for the 2 MiB
 *    page, whose bytes are the identity-mapped ones at 4 MiB;
 *  - #PF error codes (SDM 4.7) and CR2: supervisor read / write of a not-present page (0, 2),
 *    supervisor write to a read-only page with CR0.WP (3), an 8-byte read straddling into a
 *    not-present page (CR2 = the first byte of that page), instruction fetch from an XD page
 *    (0x11) and from a not-present page (0x10) with NXE; from CPL 3: read of a supervisor page
 *    (5), read of a not-present page (4), write to a read-only user page (7); the #PF frame from
 *    CPL 3 has CS 0x23 and is on TSS.RSP0; saved RIP = the faulting instruction;
 *  - a PTE change takes effect after invlpg, and after a CR3 reload; present -> not present
 *    after invlpg faults; not-present entries leave no A bit;
 *  - last: a PTE with a bit set above MAXPHYADDR (CPUID 0x80000008) -> #PF with RSVD (0x9).
 */
    .include "testlib.inc"

    .set TEST, 0x40000000
    .set PG_P, 1
    .set PG_W, 2
    .set PG_U, 4
    .set PG_A, 0x20
    .set PG_D, 0x40
    .set PG_PS, 0x80
    .set A_MAGIC, 0x4141414141414141
    .set B_MAGIC, 0x4242424242424242

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    leaq kstack_top(%rip), %rax
    movq %rax, TSS_BASE + TSS_RSP0

    /* --- the tables ----------------------------------------------------------------- */
    leaq pdpt0(%rip), %rax
    orq $(PG_P | PG_W | PG_U), %rax
    movq %rax, pml4(%rip)
    leaq pd0(%rip), %rax
    orq $(PG_P | PG_W | PG_U), %rax
    movq %rax, pdpt0(%rip)
    leaq pd_t(%rip), %rax
    orq $(PG_P | PG_W | PG_U), %rax
    movq %rax, pdpt0+8(%rip)            /* PDPT[1]: 1 GiB = TEST */
    leaq pt0(%rip), %rax
    orq $(PG_P | PG_W | PG_U), %rax
    movq %rax, pd0(%rip)                /* 0-2 MiB: 4 KiB pages */
    xorl %ecx, %ecx
1:  movq %rcx, %rax
    shlq $12, %rax
    orq $(PG_P | PG_W | PG_U), %rax
    leaq pt0(%rip), %rdx
    movq %rax, (%rdx, %rcx, 8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b
    movl $1, %ecx                       /* 2-16 MiB: 2 MiB pages */
1:  movq %rcx, %rax
    shlq $21, %rax
    orq $(PG_P | PG_W | PG_U | PG_PS), %rax
    leaq pd0(%rip), %rdx
    movq %rax, (%rdx, %rcx, 8)
    incl %ecx
    cmpl $8, %ecx
    jb 1b
    leaq pt_t(%rip), %rax
    orq $(PG_P | PG_W | PG_U), %rax
    movq %rax, pd_t(%rip)               /* TEST + 0: 4 KiB pages */
    movq $(0x400000 | PG_P | PG_W | PG_PS), pd_t+8(%rip)  /* TEST + 2 MiB -> 4 MiB, supervisor */
    leaq frame_a(%rip), %rax
    orq $(PG_P | PG_W), %rax
    movq %rax, pt_t+0*8(%rip)           /* 0: frame A, supervisor, writable */
    movq %rax, pt_t+3*8(%rip)           /* 3: frame A again (user reads it: 5) */
    movq %rax, pt_t+5*8(%rip)           /* 5: frame A (invlpg) */
    leaq frame_b(%rip), %rax
    orq $PG_P, %rax
    movq %rax, pt_t+2*8(%rip)           /* 2: frame B, supervisor, read-only */
    orq $PG_U, %rax
    movq %rax, pt_t+6*8(%rip)           /* 6: frame B, user, read-only */
    leaq frame_x(%rip), %rax
    orq $(PG_P | PG_W), %rax
    btsq $63, %rax
    movq %rax, pt_t+4*8(%rip)           /* 4: frame X, execute-disable */
    /* 1, 7, ...: not present */
    movabsq $A_MAGIC, %rax
    movq %rax, frame_a(%rip)
    movq %rax, frame_a+0xff8(%rip)
    movabsq $B_MAGIC, %rax
    movq %rax, frame_b(%rip)
    movw $0x0b0f, frame_x(%rip)         /* ud2, should a fetch get through */

    /* --- paging on ---------------------------------------------------------------------- */
    MSR_READ MSR_EFER
    orl $EFER_NXE, %eax
    MSR_WRITE_REG MSR_EFER, %rax
    movq %cr4, %rax
    orq $CR4_PAE, %rax
    movq %rax, %cr4
    leaq pml4(%rip), %rax
    movq %rax, %cr3
    movq %cr0, %rax
    btsq $31, %rax                      /* CR0.PG */
    btsq $16, %rax                      /* CR0.WP */
    movq %rax, %cr0
    PUTS "paging on\n"

    /* --- Accessed and Dirty ----------------------------------------------------------- */
    .macro BIT_CLEAR mem, bit, code
    testq $\bit, \mem
    jz .Lbc\@
    FAIL \code
.Lbc\@:
    .endm
    .macro BIT_SET mem, bit, code
    testq $\bit, \mem
    jnz .Lbs\@
    FAIL \code
.Lbs\@:
    .endm
    BIT_CLEAR pdpt0+8(%rip), PG_A, 0x10 /* nothing has used the TEST path yet */
    BIT_CLEAR pd_t(%rip), PG_A, 0x10
    BIT_CLEAR pt_t(%rip), PG_A, 0x10
    movq TEST, %rax                     /* read */
    ASSERT_EQ64 %rax, A_MAGIC, 0x11
    BIT_SET pdpt0+8(%rip), PG_A, 0x12
    BIT_SET pd_t(%rip), PG_A, 0x13
    BIT_SET pt_t(%rip), PG_A, 0x14
    BIT_CLEAR pt_t(%rip), PG_D, 0x15    /* a read does not dirty */
    movq $1, TEST+8                     /* write through the translation the read cached */
    BIT_SET pt_t(%rip), PG_D, 0x16
    BIT_CLEAR pd_t+8(%rip), PG_A, 0x17  /* the 2 MiB page */
    movq TEST+0x200010, %rax
    BIT_SET pd_t+8(%rip), PG_A, 0x18
    BIT_CLEAR pd_t+8(%rip), PG_D, 0x19
    movq $0x5a5a, TEST+0x200010
    BIT_SET pd_t+8(%rip), PG_D, 0x1a
    movq 0x400010, %rax                 /* the same byte through the identity map */
    ASSERT_EQ %rax, $0x5a5a, 0x1b

    /* --- supervisor #PF ----------------------------------------------------------------- */
    EXPECT 1f
pf_np_read:
    movq TEST+0x1000, %rax
    FAIL 0x20
1:  CHECK_EXC EXC_PF, 0, pf_np_read, KERNEL_CS, 0x20
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x1000), 0x25
    movq %cr2, %rax
    ASSERT_EQ %rax, $(TEST+0x1000), 0x26
    ASSERT_EQ pt_t+8(%rip), $0, 0x27    /* no A bit in a not-present entry */

    EXPECT 1f
pf_np_write:
    movq %rax, TEST+0x1000
    FAIL 0x28
1:  CHECK_EXC EXC_PF, 2, pf_np_write, KERNEL_CS, 0x28
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x1000), 0x2d

    EXPECT 1f
pf_ro_write:
    movq %rax, TEST+0x2000
    FAIL 0x30
1:  CHECK_EXC EXC_PF, 3, pf_ro_write, KERNEL_CS, 0x30
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x2000), 0x35
    movq TEST+0x2000, %rax              /* reading it is fine */
    ASSERT_EQ64 %rax, B_MAGIC, 0x36
    BIT_CLEAR pt_t+2*8(%rip), PG_D, 0x37

    EXPECT 1f
pf_straddle:
    movq TEST+0xffc, %rax               /* 4 bytes of frame A, 4 of the not-present page */
    FAIL 0x38
1:  CHECK_EXC EXC_PF, 0, pf_straddle, KERNEL_CS, 0x38
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x1000), 0x3d

    /* --- instruction fetch with EFER.NXE -------------------------------------------- */
    movq TEST+0x4000, %rax              /* data reads of an XD page are fine */
    ASSERT_EQ %rax, $0x0b0f, 0x40
    EXPECT 1f
    movl $(TEST+0x4000), %eax
    jmp *%rax
1:  CHECK_EXC EXC_PF, 0x11, TEST+0x4000, KERNEL_CS, 0x48
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x4000), 0x4d
    EXPECT 1f
    movl $(TEST+0x1000), %eax
    jmp *%rax
1:  CHECK_EXC EXC_PF, 0x10, TEST+0x1000, KERNEL_CS, 0x50
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x1000), 0x55

    /* --- invlpg and CR3 reloads ----------------------------------------------------------- */
    movq TEST+0x5000, %rax              /* cache the translation to frame A */
    ASSERT_EQ64 %rax, A_MAGIC, 0x60
    leaq frame_b(%rip), %rax
    orq $(PG_P | PG_W), %rax
    movq %rax, pt_t+5*8(%rip)
    invlpg TEST+0x5000
    movq TEST+0x5000, %rax
    ASSERT_EQ64 %rax, B_MAGIC, 0x61
    movq $0, pt_t+5*8(%rip)
    invlpg TEST+0x5000
    EXPECT 1f
pf_gone:
    movq TEST+0x5000, %rax
    FAIL 0x68
1:  CHECK_EXC EXC_PF, 0, pf_gone, KERNEL_CS, 0x68
    leaq frame_a(%rip), %rax            /* not present -> present needs no invalidation */
    orq $(PG_P | PG_W), %rax
    movq %rax, pt_t+5*8(%rip)
    movq TEST+0x5000, %rax
    ASSERT_EQ64 %rax, A_MAGIC, 0x62
    leaq frame_b(%rip), %rax
    orq $(PG_P | PG_W), %rax
    movq %rax, pt_t+5*8(%rip)
    movq %cr3, %rax                     /* a CR3 load flushes (no global pages here) */
    movq %rax, %cr3
    movq TEST+0x5000, %rax
    ASSERT_EQ64 %rax, B_MAGIC, 0x63

    /* --- CPL 3 ------------------------------------------------------------------------------ */
    movq %rsp, kernel_rsp(%rip)
    leaq user_code(%rip), %rdi
    leaq ustack_top(%rip), %rsi
    movl $RFLAGS_FIXED, %edx
    call tl_enter_user
    FAIL 0x6f
back_in_kernel:
    ASSERT_EQ %gs:PC_VECTOR, $EXC_UD, 0x88

    /* --- last: a reserved bit (above MAXPHYADDR) in a PTE ---------------------------------- */
    movl $0x80000000, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x80000008, %eax
    jb 2f
    movl $0x80000008, %eax
    xorl %ecx, %ecx
    cpuid
    movzbl %al, %ecx                    /* MAXPHYADDR */
    cmpl $52, %ecx
    jae 2f
    leaq frame_a(%rip), %rax
    orq $(PG_P | PG_W), %rax
    btsq %rcx, %rax
    movq %rax, pt_t+7*8(%rip)
    EXPECT 1f
pf_rsvd:
    movq TEST+0x7000, %rax
    FAIL 0x90
1:  CHECK_EXC EXC_PF, 9, pf_rsvd, KERNEL_CS, 0x90
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x7000), 0x95
2:  PASS

/* ---- CPL 3 ---------------------------------------------------------------------------------- */
user_code:
    EXPECT 1f
u_sup_read:
    movq TEST+0x3000, %rax              /* present, supervisor-only */
    FAIL 0x70
1:  CHECK_EXC EXC_PF, 5, u_sup_read, USER_CS, 0x70
    ASSERT_EQ %gs:PC_CR2, $(TEST+0x3000), 0x75
    ASSERT_EQ %gs:PC_SS, $USER_DS, 0x76
    leaq kstack_top(%rip), %rax         /* on RSP0: 5 words and the error code */
    subq $48, %rax
    ASSERT_EQ %gs:PC_ENTRY_RSP, %rax, 0x77
    EXPECT 1f
u_np_read:
    movq TEST+0x1000, %rax
    FAIL 0x78
1:  CHECK_EXC EXC_PF, 4, u_np_read, USER_CS, 0x78
    EXPECT 1f
u_ro_write:
    movq %rax, TEST+0x6000              /* user page, read-only */
    FAIL 0x80
1:  CHECK_EXC EXC_PF, 7, u_ro_write, USER_CS, 0x80
    movq TEST+0x6000, %rax
    ASSERT_EQ64 %rax, B_MAGIC, 0x85
    movq kernel_rsp(%rip), %rbx         /* back to CPL 0 for good */
    EXPECT_JMP back_in_kernel, %rbx
    ud2                                 /* the #UD handler continues at back_in_kernel */
    FAIL 0x86

    .section .data
kernel_rsp:
    .quad 0

    .section .bss
    .balign 4096
pml4:       .skip 4096
pdpt0:      .skip 4096
pd0:        .skip 4096
pt0:        .skip 4096
pd_t:       .skip 4096
pt_t:       .skip 4096
frame_a:    .skip 4096
frame_b:    .skip 4096
frame_x:    .skip 4096
            .skip 4096
kstack_top:
            .skip 4096
ustack_top:
