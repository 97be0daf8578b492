/*
 * hello: the start state of every vCPU (docs/guest-abi.md) and a multi-vCPU run.
 *
 * Each vCPU checks, before it changes any register: RAX, RBX, RCX, RDX, RBP, R8-R15 = 0,
 * RDI = its index < RSI = vCPU count, RSP = 0x11000 + 0x1000 * index, RFLAGS = 0x2, CS = 0x08,
 * SS = DS = ES = FS = GS = 0x10, then the tables: GDTR = 0x1000 / 0x27 + 16 * count,
 * IDTR limit 0, TR = 0x28 + 16 * index, its TSS's RSP0 = its stack top, the GDT descriptors'
 * types, CR0.PE = 1, EFER.LME = LMA = 1, FS/GS bases 0.  Then it prints "hello from vCPU N" and
 * counts itself in with `lock xadd`; vCPU 0 waits until every vCPU has printed, then passes.
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    pushfq                              /* RFLAGS before any instruction changes the flags */
    /* General registers other than RDI/RSI/RSP are 0 (checked before anything uses them). */
    testq %rax, %rax
    jnz bad_gpr
    testq %rbx, %rbx
    jnz bad_gpr
    testq %rcx, %rcx
    jnz bad_gpr
    testq %rdx, %rdx
    jnz bad_gpr
    testq %rbp, %rbp
    jnz bad_gpr
    testq %r8, %r8
    jnz bad_gpr
    testq %r9, %r9
    jnz bad_gpr
    testq %r10, %r10
    jnz bad_gpr
    testq %r11, %r11
    jnz bad_gpr
    testq %r12, %r12
    jnz bad_gpr
    testq %r13, %r13
    jnz bad_gpr
    testq %r14, %r14
    jnz bad_gpr
    testq %r15, %r15
    jnz bad_gpr
    /* RSP = 0x11000 + 0x1000 * RDI (less the RFLAGS pushed above). */
    movq %rdi, %rax
    shlq $12, %rax
    addq $(0x11000 - 8), %rax
    cmpq %rax, %rsp
    jne bad_rsp
    /* RFLAGS = 0x2 exactly (IF = 0). */
    popq %rax
    cmpq $2, %rax
    jne bad_rflags

    ASSERT a, %rsi, $0, 0x01            /* at least one vCPU */
    ASSERT b, %rdi, %rsi, 0x02          /* index < count */
    ASSERT be, %rsi, $MAX_VCPUS, 0x03   /* testlib's limit, not the machine's */

    /* Segment selectors. */
    xorl %eax, %eax
    movw %cs, %ax
    ASSERT_EQ %rax, $KERNEL_CS, 0x10
    movw %ss, %ax
    ASSERT_EQ %rax, $KERNEL_DS, 0x11
    movw %ds, %ax
    ASSERT_EQ %rax, $KERNEL_DS, 0x12
    movw %es, %ax
    ASSERT_EQ %rax, $KERNEL_DS, 0x13
    movw %fs, %ax
    ASSERT_EQ %rax, $KERNEL_DS, 0x14
    movw %gs, %ax
    ASSERT_EQ %rax, $KERNEL_DS, 0x15

    /* GDTR = 0x1000, limit 0x27 + 16 * count. */
    subq $16, %rsp
    sgdt (%rsp)
    movzwl (%rsp), %eax
    movq %rsi, %rcx
    shlq $4, %rcx
    addq $0x27, %rcx
    ASSERT_EQ %rax, %rcx, 0x20
    movq 2(%rsp), %rax
    ASSERT_EQ %rax, $GDT_BASE, 0x21
    /* IDTR limit 0 (nothing to deliver through yet). */
    sidt (%rsp)
    movzwl (%rsp), %eax
    ASSERT_EQ %rax, $0, 0x22
    addq $16, %rsp
    /* TR = 0x28 + 16 * index. */
    xorl %eax, %eax
    str %ax
    movq %rdi, %rcx
    shlq $4, %rcx
    addq $TSS_SEL0, %rcx
    ASSERT_EQ %rax, %rcx, 0x23

    /* The GDT's descriptors: type/S/DPL/P (accessed bit ignored) and L/D of the code ones. */
    movq GDT_BASE + 0x08, %rax
    call desc_bits
    ASSERT_EQ %rax, $0x9a20, 0x30        /* kernel code: P, DPL 0, code exec/read; L = 1, D = 0 */
    movq GDT_BASE + 0x10, %rax
    call desc_bits
    andl $0xff00, %eax
    ASSERT_EQ %rax, $0x9200, 0x31        /* kernel data: P, DPL 0, data read/write */
    movq GDT_BASE + 0x18, %rax
    call desc_bits
    andl $0xff00, %eax
    ASSERT_EQ %rax, $0xf200, 0x32        /* user data: P, DPL 3 */
    movq GDT_BASE + 0x20, %rax
    call desc_bits
    ASSERT_EQ %rax, $0xfa20, 0x33        /* user code: P, DPL 3, L = 1 */
    /* This vCPU's TSS descriptor: 64-bit TSS (available or busy), base 0x2000 + 0x80 * index. */
    movq %rdi, %rcx
    shlq $4, %rcx
    movq GDT_BASE + TSS_SEL0(%rcx), %rax
    movq %rax, %rdx
    shrq $40, %rdx
    andl $0xfd, %edx                      /* P, DPL, type 9 (0xb when busy) */
    ASSERT_EQ %rdx, $0x89, 0x34
    movq %rax, %rdx                        /* base 23:0 in bits 39:16, base 31:24 in 63:56 */
    shrq $16, %rdx
    andl $0xffffff, %edx
    shrq $56, %rax
    shlq $24, %rax
    orq %rdx, %rax
    movl GDT_BASE + TSS_SEL0 + 8(%rcx), %edx  /* base 63:32 */
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rdi, %rcx
    shlq $7, %rcx
    addq $TSS_BASE, %rcx
    ASSERT_EQ %rax, %rcx, 0x35
    /* Its RSP0 is this vCPU's boot stack top. */
    movq TSS_RSP0(%rcx), %rax
    movq %rdi, %rdx
    shlq $12, %rdx
    addq $0x11000, %rdx
    ASSERT_EQ %rax, %rdx, 0x36

    /* CR0.PE = 1; EFER.LME = LMA = 1; FS and GS bases 0. */
    movq %cr0, %rax
    testl $CR0_PE, %eax
    jnz 1f
    FAIL 0x40
1:  pushq %rdi
    pushq %rsi
    MSR_READ MSR_EFER
    andl $(EFER_LME | EFER_LMA), %eax
    ASSERT_EQ %rax, $(EFER_LME | EFER_LMA), 0x41
    MSR_READ MSR_FS_BASE
    ASSERT_EQ %rax, $0, 0x42
    MSR_READ MSR_GS_BASE
    ASSERT_EQ %rax, $0, 0x43
    popq %rsi
    popq %rdi

    call tl_init
    PUTS "hello from vCPU "
    PUTDEC %rdi
    PUTS "\n"

    movl $1, %eax
    lock xaddl %eax, printed(%rip)
    ASSERT b, %rax, %rsi, 0x51            /* the count before this vCPU: below n */
    testq %rdi, %rdi
    jnz others
    /* vCPU 0: wait until every vCPU has printed its line. */
1:  pause
    movl printed(%rip), %eax
    cmpq %rsi, %rax
    jb 1b
    ASSERT_EQ %rax, %rsi, 0x50            /* nobody counted twice */
    PASS
others:
1:  cli                                   /* done: stop for good; vCPU 0 ends the run */
    hlt
    jmp 1b

bad_gpr:
    FAIL 0x04
bad_rsp:
    FAIL 0x05
bad_rflags:
    PUTS "rflags "
    PUTHEX %rax
    PUTS "\n"
    FAIL 0x06

    /* rax = descriptor -> rax = (byte 5 << 8) | (L << 5) | (D << 6): access byte and L/D bits. */
desc_bits:
    movq %rax, %rdx
    shrq $32, %rdx
    shrq $40, %rax
    andl $0xfe, %eax                      /* access byte without the accessed bit */
    shlq $8, %rax
    shrl $16, %edx                        /* byte 6 of the descriptor: G D L AVL limit 19:16 */
    andl $0x60, %edx                      /* D (0x40), L (0x20) */
    orq %rdx, %rax
    ret

    .section .data
    .balign 64
    .type printed, @object
    .size printed, 4
printed:                                  /* vCPUs that have printed their line */
    .long 0
