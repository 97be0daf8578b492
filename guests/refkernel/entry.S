/*
 * entry.S -- the refkernel's way in and out of C: boot entry, IDT stubs, the common trap path,
 * the syscall entry and sysret exit, the context switch and wrmsr_safe.
 *
 * GS: in the kernel GS.base = &cpus[i] (refkernel.h: struct cpu); at CPL 3 it is in
 * KERNEL_GS_BASE, so every entry from CPL 3 and every exit to it does swapgs.
 */
    .set KERNEL_CS, 0x08
    .set USER_DS, 0x1b
    .set USER_CS, 0x23
    .set MAX_CPUS, 16
    .set KSTACK_SIZE, 8192
    .set VEC_SYSCALL, 0x100
    .set CPU_KSTACK_TOP, 8
    .set CPU_USER_RSP, 16

/* 15 GPRs, in struct trapframe order (r15 lowest) */
.macro PUSH_REGS
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
.endm
.macro POP_REGS
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
.endm

/* ---- boot: every vCPU starts here (RDI = index, RSI = count, IF = 0) ------------------------ */
    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    cmpq $MAX_CPUS, %rdi
    jae 1f
    /* this CPU's idle stack: idle_stacks + (index + 1) * KSTACK_SIZE */
    leaq 1(%rdi), %rax
    imulq $KSTACK_SIZE, %rax
    leaq idle_stacks(%rip), %rsp
    addq %rax, %rsp
    xorl %ebp, %ebp
    call kmain                      /* never returns */
1:  hlt                             /* a vCPU beyond MAX_CPUS stays out of the way (IF = 0) */
    jmp 1b
    .size _start, . - _start

    .text
/* ---- IDT stubs: 256 of them, 16 bytes apart (idt_stubs + 16 * vector) --------------------- */
    .balign 16
    .globl idt_stubs
idt_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec                      /* the CPU pushed an error code */
    .else
    pushq $0
    pushq $vec
    .endif
    jmp trap_common
    .set vec, vec + 1
    .endr

/* ---- the common trap path -------------------------------------------------------------------- */
    .globl trap_common
    .type trap_common, @function
trap_common:
    /* stack: vector, error, rip, cs, rflags, rsp, ss */
    testb $3, 24(%rsp)
    jz 1f
    swapgs                          /* from CPL 3: GS.base <- &cpus[i] */
1:  PUSH_REGS
    cld
    movq %rsp, %rdi
    call trap_dispatch              /* returns with IF = 0 */
    .globl ret_from_trap
ret_from_trap:
    POP_REGS
    addq $16, %rsp                  /* vector, error */
    testb $3, 8(%rsp)
    jz 2f
    swapgs                          /* back to CPL 3 */
2:  iretq
    .size trap_common, . - trap_common

/* A new task's first switch_to returns here: its kernel stack holds the trapframe that iretq
 * takes to user_main at CPL 3. */
    .globl task_first_run
    .type task_first_run, @function
task_first_run:
    jmp ret_from_trap
    .size task_first_run, . - task_first_run

/* ---- syscall: RAX = number, RDI, RSI, RDX, R10, R8 = arguments (IF = 0 by FMASK) --------- */
    .globl syscall_entry
    .type syscall_entry, @function
syscall_entry:
    swapgs
    movq %rsp, %gs:CPU_USER_RSP
    movq %gs:CPU_KSTACK_TOP, %rsp
    pushq $USER_DS                  /* a trapframe like an interrupt from CPL 3 would build */
    pushq %gs:CPU_USER_RSP
    pushq %r11                      /* user RFLAGS */
    pushq $USER_CS
    pushq %rcx                      /* user RIP after the syscall */
    pushq $0
    pushq $VEC_SYSCALL
    PUSH_REGS
    cld
    movq %rsp, %rdi
    call syscall_dispatch           /* returns with IF = 0 */
    .globl syscall_exit
syscall_exit:
    POP_REGS
    addq $16, %rsp                  /* vector, error */
    popq %rcx                       /* RIP */
    addq $8, %rsp                   /* CS */
    popq %r11                       /* RFLAGS */
    popq %rsp                       /* user RSP: nothing on the kernel stack is used after this */
    swapgs
    sysretq
    .size syscall_entry, . - syscall_entry

/* ---- switch_to(u64 *prev_ksp, u64 next_ksp): callee-saved registers, then the stacks -------- */
    .globl switch_to
    .type switch_to, @function
switch_to:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    .globl switch_to_resume
switch_to_resume:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size switch_to, . - switch_to

/* ---- int wrmsr_safe(u32 msr, u64 value): 0, or -1 when the wrmsr raised #GP --------------- */
    .globl wrmsr_safe
    .type wrmsr_safe, @function
wrmsr_safe:
    movl %edi, %ecx
    movl %esi, %eax
    movq %rsi, %rdx
    shrq $32, %rdx
    .globl wrmsr_safe_insn
wrmsr_safe_insn:
    wrmsr
    xorl %eax, %eax
    ret
    .globl wrmsr_safe_fixup
wrmsr_safe_fixup:                   /* the #GP handler resumes here (exception table) */
    movl $-1, %eax
    ret
    .size wrmsr_safe, . - wrmsr_safe

    .pushsection .extable, "a"
    .balign 8
    .quad wrmsr_safe_insn, wrmsr_safe_fixup
    .popsection

    .section .note.GNU-stack, "", @progbits
