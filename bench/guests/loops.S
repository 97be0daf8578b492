/*
 * loops: the benchmark guest of bench/ (see bench/README.md).
 *
 * One image, many loops.  The host picks one by writing `mode` (and the loop's parameters) into
 * guest RAM before the run; every vCPU runs it, the last vCPU to finish ends the run through port
 * 0xf4 (status 1), the others park in `cli; hlt`.  Each loop lies between the symbols <name>_loop
 * and <name>_end, so bench/ can run the very same bytes in a plain Unicorn engine
 * (emu_start(<name>_loop, <name>_end)) with the registers the setup code below would give it.
 *
 *   mode  loop     body (per iteration)                                registers
 *    0    alu4     add, xor, dec, jnz                   (4 insns)          rcx = iters
 *    1    alu32    30 ALU ops, dec, jnz                 (32 insns)         rcx = iters
 *    2    mem      2 loads, 2 stores over 4 pages, 5 ALU (9 insns)         rcx = iters, r8 = buffer, rdx = 0
 *    3    wrmsr    wrmsr KERNEL_GS_BASE, dec, jnz       (3 insns)          r9 = iters, ecx = 0xc0000102
 *    4    empty    dec, jnz                             (2 insns)          r9 = iters
 *    5    cpuid    mov, xor, cpuid, dec, jnz            (5 insns)          r9 = iters, r10 = leaf
 *    6    cpuidb   mov, xor, dec, jnz (cpuid's baseline) (4 insns)         r9 = iters, r10 = leaf
 *    7    int80    int $0x80 (handler: iretq), dec, jnz (3 insns + 1)      r9 = iters
 *    8    gp       rdmsr 0x12345 (#GP, handler skips it), dec, jnz          r9 = iters
 *    9    ud       ud2 (#UD, handler skips it), dec, jnz                    r9 = iters
 *   10    touch    one read per 4 KiB frame of [touch_start, touch_end)    r8 = start, r10 = end
 *
 * The mem loop of vCPU i uses the 16 KiB at 0x200000 + 0x10000 * i.
 * Built by bench/guests/Makefile (GNU as/ld only).
 */
    .section .text.start, "ax"
    .code64
    .globl _start
    .type _start, @function
_start:
    movq %rdi, %r14                 /* vCPU index */
    movq %rsi, %r15                 /* vCPU count */
    movq mode(%rip), %rax
    cmpq $NMODES, %rax
    jae bad_mode
    leaq modes(%rip), %rbx
    jmpq *(%rbx,%rax,8)

bad_mode:
    movl $0x7f, %eax
    outb %al, $0xf4

/* ---- the end of every loop -------------------------------------------------------------- */
done:
    movl $1, %eax
    lock xaddl %eax, finished(%rip)
    incl %eax
    cmpl %r15d, %eax
    jne park
    xorl %eax, %eax
    outb %al, $0xf4                 /* status 1 */
park:
    cli
    hlt
    jmp park

/* ---- mode 0: alu4 ------------------------------------------------------------------------ */
m_alu4:
    movq iters(%rip), %rcx
    xorl %eax, %eax
    xorl %ebx, %ebx
    movl $3, %edx
    .globl alu4_loop, alu4_end
alu4_loop:
    addq %rdx, %rax
    xorq %rax, %rbx
    decq %rcx
    jnz alu4_loop
alu4_end:
    jmp done

/* ---- mode 1: alu32 ----------------------------------------------------------------------- */
m_alu32:
    movq iters(%rip), %rcx
    xorl %eax, %eax
    xorl %ebx, %ebx
    movl $3, %edx
    movl $5, %r9d
    movl $7, %r10d
    movl $11, %r11d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    .globl alu32_loop, alu32_end
alu32_loop:
    .rept 3
    addq %rdx, %rax
    xorq %rax, %rbx
    subq %r9, %r10
    orq %r10, %r11
    andq %rbx, %r12
    addq %r11, %r13
    xorq %r13, %rdx
    shlq $1, %r9
    addq $1, %r9
    rolq $3, %rax
    .endr
    decq %rcx
    jnz alu32_loop
alu32_end:
    jmp done

/* ---- mode 2: mem ------------------------------------------------------------------------- */
m_mem:
    movq %r14, %r8
    shlq $16, %r8
    addq $0x200000, %r8
    movq iters(%rip), %rcx
    xorl %edx, %edx
    xorl %eax, %eax
    xorl %ebx, %ebx
    .globl mem_loop, mem_end
mem_loop:
    movq (%r8,%rdx), %rax
    movq 8(%r8,%rdx), %rbx
    addq %rax, %rbx
    movq %rbx, 16(%r8,%rdx)
    movq %rax, 24(%r8,%rdx)
    addq $64, %rdx
    andl $0x3fff, %edx
    decq %rcx
    jnz mem_loop
mem_end:
    jmp done

/* ---- mode 3: wrmsr ----------------------------------------------------------------------- */
m_wrmsr:
    movq iters(%rip), %r9
    movl $0xc0000102, %ecx          /* MSR_KERNEL_GS_BASE: architectural, passes through */
    xorl %eax, %eax
    xorl %edx, %edx
    .globl wrmsr_loop, wrmsr_end
wrmsr_loop:
    wrmsr
    decq %r9
    jnz wrmsr_loop
wrmsr_end:
    jmp done

/* ---- mode 4: empty (the baseline of the exit and delivery loops) ------------------------- */
m_empty:
    movq iters(%rip), %r9
    .globl empty_loop, empty_end
empty_loop:
    decq %r9
    jnz empty_loop
empty_end:
    jmp done

/* ---- mode 5: cpuid ----------------------------------------------------------------------- */
m_cpuid:
    movq iters(%rip), %r9
    movq leaf(%rip), %r10
    .globl cpuid_loop, cpuid_end
cpuid_loop:
    movl %r10d, %eax
    xorl %ecx, %ecx
    cpuid
    decq %r9
    jnz cpuid_loop
cpuid_end:
    jmp done

/* ---- mode 6: cpuidb (mode 5 without the cpuid) ------------------------------------------- */
m_cpuidb:
    movq iters(%rip), %r9
    movq leaf(%rip), %r10
    .globl cpuidb_loop, cpuidb_end
cpuidb_loop:
    movl %r10d, %eax
    xorl %ecx, %ecx
    decq %r9
    jnz cpuidb_loop
cpuidb_end:
    jmp done

/* ---- mode 7: int $0x80 ------------------------------------------------------------------- */
m_int80:
    call setup_idt
    movq iters(%rip), %r9
    .globl int80_loop, int80_end
int80_loop:
    int $0x80
    decq %r9
    jnz int80_loop
int80_end:
    jmp done

/* ---- mode 8: #GP from rdmsr of an unknown MSR ------------------------------------------- */
m_gp:
    call setup_idt
    movq iters(%rip), %r9
    movl $0x12345, %ecx
    .globl gp_loop, gp_end
gp_loop:
    rdmsr
    decq %r9
    jnz gp_loop
gp_end:
    jmp done

/* ---- mode 9: #UD from ud2 ---------------------------------------------------------------- */
m_ud:
    call setup_idt
    movq iters(%rip), %r9
    .globl ud_loop, ud_end
ud_loop:
    ud2
    decq %r9
    jnz ud_loop
ud_end:
    jmp done

/* ---- mode 10: touch one byte of every frame ---------------------------------------------- */
m_touch:
    movq touch_start(%rip), %r8
    movq touch_end(%rip), %r10
    .globl touch_loop, touch_end_
touch_loop:
    movb (%r8), %al
    addq $4096, %r8
    cmpq %r10, %r8
    jb touch_loop
touch_end_:
    jmp done

/* ---- handlers ------------------------------------------------------------------------------ */
h_int80:
    iretq
h_gp:                               /* skip the 2-byte rdmsr */
    addq $8, %rsp                   /* error code */
    addq $2, (%rsp)
    iretq
h_ud:                               /* skip the 2-byte ud2 */
    addq $2, (%rsp)
    iretq

/* set_gate(edi = vector, rax = handler): 64-bit interrupt gate, CS 0x08, DPL 0, IST 0 */
set_gate:
    movq %rax, %rdx
    andl $0xffff, %edx
    orq $(0x08 << 16), %rdx
    movq $0x8e, %rcx
    shlq $40, %rcx
    orq %rcx, %rdx
    movq %rax, %rcx
    shrq $16, %rcx
    andq $0xffff, %rcx
    shlq $48, %rcx
    orq %rcx, %rdx
    movl %edi, %ecx
    shll $4, %ecx
    leaq idt(%rip), %r11
    movq %rdx, (%r11,%rcx)
    movq %rax, %rdx
    shrq $32, %rdx
    movq %rdx, 8(%r11,%rcx)
    ret

setup_idt:                          /* every vCPU writes the same gates */
    movl $6, %edi
    leaq h_ud(%rip), %rax
    call set_gate
    movl $13, %edi
    leaq h_gp(%rip), %rax
    call set_gate
    movl $0x80, %edi
    leaq h_int80(%rip), %rax
    call set_gate
    lidt idtr(%rip)
    ret

    .section .rodata
    .balign 8
modes:
    .quad m_alu4, m_alu32, m_mem, m_wrmsr, m_empty, m_cpuid, m_cpuidb, m_int80, m_gp, m_ud
    .quad m_touch
    .set NMODES, (. - modes) / 8

/* ---- parameters, written by the host before the run ---------------------------------------- */
    .section .data
    .balign 8
    .globl mode, iters, leaf, touch_start, touch_end, finished
mode:        .quad 0
iters:       .quad 1000
leaf:        .quad 0
touch_start: .quad 0
touch_end:   .quad 0
finished:    .quad 0
idtr:
    .word 256 * 16 - 1
    .quad idt

    .section .bss
    .balign 4096
idt:
    .skip 256 * 16
