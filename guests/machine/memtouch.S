/*
 * memtouch: memory that must survive host page-out and page-in (vCPU 0, guest paging off).
 *
 * Tests page the frames of `membuf` (1 MiB), the code and the stack out from the host while it
 * runs; every byte must read back as written.  ROUNDS times: write a pattern that depends on
 * the round to every qword of the buffer, then read it all back.  Then accesses that cross a
 * page boundary: 8-byte stores and loads at the end of a page - 4 (checked against 4-byte loads
 * of each page), and `rep movsb` of 0x2000 bytes from one page-crossing range to another,
 * checked with `repe cmpsb` and against the pattern.  Prints "round N ok" per round.
 */
    .include "testlib.inc"

    .set BUF_SIZE, 0x100000
    .set QWORDS, BUF_SIZE / 8
    .set ROUNDS, 4
    .set K, 0x9e3779b97f4a7c15          /* odd: i * K is different for every i */

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movabsq $K, %r8
    leaq membuf(%rip), %rdi
    xorl %r15d, %r15d                   /* round */
round:
    movq %r15, %rax                     /* value(i) = r + i * K */
    xorl %ecx, %ecx
1:  movq %rax, (%rdi, %rcx, 8)
    addq %r8, %rax
    incq %rcx
    cmpq $QWORDS, %rcx
    jb 1b
    movq %r15, %rax
    xorl %ecx, %ecx
2:  cmpq %rax, (%rdi, %rcx, 8)
    jne bad_qword
    addq %r8, %rax
    incq %rcx
    cmpq $QWORDS, %rcx
    jb 2b
    PUTS "round "
    PUTDEC %r15
    PUTS " ok\n"
    incq %r15
    cmpq $ROUNDS, %r15
    jb round

    /* --- accesses that straddle two pages -------------------------------------------------- */
    movabsq $0x1122334455667788, %rax
    xorl %ecx, %ecx
3:  movq %rcx, %rdx                     /* page p = 1, 17, 33, ... : the qword at p * 4K - 4 */
    shlq $16, %rdx
    leaq 0xffc(%rdi, %rdx), %rsi
    movq %rax, (%rsi)                   /* one store, two pages */
    movl (%rsi), %edx
    cmpl %eax, %edx
    jne bad_straddle
    movq %rax, %rdx
    shrq $32, %rdx
    cmpl 4(%rsi), %edx
    jne bad_straddle
    cmpq (%rsi), %rax                   /* one load, two pages */
    jne bad_straddle
    addq %r8, %rax
    incl %ecx
    cmpl $16, %ecx
    jb 3b

    /* --- rep movsb across pages ------------------------------------------------------------ */
    leaq membuf+0x18800(%rip), %rsi     /* 0x2000 bytes: 3 source pages, no straddle above */
    leaq membuf+0x80400(%rip), %rdi     /* 3 destination pages */
    movl $0x2000, %ecx
    cld
    rep movsb
    ASSERT_EQ %rcx, $0, 0x30
    leaq membuf+0x18800(%rip), %rsi
    leaq membuf+0x80400(%rip), %rdi
    movl $0x2000, %ecx
    repe cmpsb
    jne bad_copy
    ASSERT_EQ %rcx, $0, 0x31
    /* and the copy holds the pattern of the last round (qword i of the source = 3 + i * K) */
    leaq membuf+0x80400(%rip), %rdi
    movq $(0x18800 / 8), %rcx
    movq %rcx, %rax
    imulq %r8, %rax
    addq $(ROUNDS - 1), %rax
    xorl %edx, %edx
4:  cmpq %rax, (%rdi, %rdx, 8)
    jne bad_pattern
    addq %r8, %rax
    incl %edx
    cmpl $(0x2000 / 8), %edx
    jb 4b
    PASS

bad_qword:
    PUTS "qword "
    PUTHEX %rcx
    PUTS " of round "
    PUTDEC %r15
    PUTS " reads "
    movq (%rdi,%rcx,8), %rdx
    PUTHEX %rdx
    PUTS ", wrote "
    PUTHEX %rax
    PUTS "\n"
    FAIL 0x10
bad_straddle:
    PUTS "straddling qword at "
    PUTHEX %rsi
    PUTS "\n"
    FAIL 0x20
bad_copy:
    FAIL 0x32
bad_pattern:
    FAIL 0x33

    .section .bss
    .balign 4096
    .globl membuf
    .type membuf, @object
membuf:
    .skip BUF_SIZE
    .size membuf, BUF_SIZE
