/*
 * apfdemo: a small paravirtual guest kernel that uses KVM asynchronous page faults.
 *
 * Stand-in for the reference guest (guests/refkernel) so the TUI has something to show: every vCPU
 * runs NTASKS tasks that touch pages of a shared work area (WORK_BASE, NPAGES pages) which the
 * host's pager swaps out.  The guest follows arch/x86/kernel/kvm.c of 2.6.38:
 *
 *   - per vCPU a 64-byte aligned reason area; MSR_KVM_ASYNC_PF_EN = area | ENABLED | SEND_ALWAYS
 *     (the seed profile refuses SEND_ALWAYS with #GP: the guest then retries with ENABLED only);
 *   - #PF handler: read the reason and zero it; 0 -> a real #PF (fatal here), 1 (page not present)
 *     -> the current task sleeps on the token (CR2) and another task runs, 2 (page ready) -> wake
 *     the task sleeping on the token; token 0xffffffff wakes every sleeper of this vCPU;
 *   - with no runnable task the vCPU idles in `sti; hlt`.
 *
 * Some tasks do things the protocol has rules for, so that every path shows up in a run:
 *   - task 0 of each vCPU touches a page with interrupts off every 16th iteration (IF = 0: the host
 *     cannot go async, the vCPU stalls synchronously);
 *   - tasks share pages, so two tasks of one vCPU fault on the same gfn (the host's "doublefault":
 *     the vCPU is halted until a page comes in);
 *   - task 1 of vCPU 1 (vCPU 0 on a 1-vCPU machine) takes its vCPU "offline" every HOTPLUG_EVERY
 *     iterations: it writes 0 to the MSR with work outstanding (the host cancels it), then
 *     re-enables APF (the host queues a wake-all, which wakes every sleeper).
 *
 * Symbols for the debugger: `current_task` is u64[MAX_CPUS], the address of the NUL-terminated
 * name of the task each vCPU runs ("idle" when none), see docs/ui.md.
 *
 * Build: see Makefile (NTASKS, NPAGES, HOTPLUG_EVERY can be overridden with --defsym).
 */
    .set MSR_APF, 0x4b564d02
    .set APF_ENABLED, 1
    .set APF_SEND_ALWAYS, 2
    .set MSR_GS_BASE, 0xc0000101
    .set PORT_CONSOLE, 0xe9
    .set PORT_EXIT, 0xf4
    .set KERNEL_CS, 0x08
    .set KERNEL_DS, 0x10

    .ifndef NTASKS
    .set NTASKS, 4
    .endif
    .ifndef NPAGES
    .set NPAGES, 24
    .endif
    .ifndef HOTPLUG_EVERY
    .set HOTPLUG_EVERY, 40
    .endif
    .ifndef COMPUTE
    .set COMPUTE, 300             /* loop iterations of arithmetic between two page touches */
    .endif
    .ifndef REPORT_EVERY
    .set REPORT_EVERY, 64
    .endif
    .set MAX_CPUS, 8
    .set WORK_BASE, 0x400000
    .set TASK_STACK, 1024
    .set IDLE_STACK, 1024
    .set YIELD_VECTOR, 0x81

/* per-vCPU area (GS.base) */
    .set PC_SELF, 0
    .set PC_INDEX, 8
    .set PC_CUR, 16               /* current task, 0 = idle */
    .set PC_IDLE_RSP, 24          /* saved frame of the idle loop */
    .set PC_AREA, 32              /* the APF reason area */
    .set PC_TASKS, 40             /* this vCPU's task array */
    .set PC_NP, 48                /* "page not present" received */
    .set PC_READY, 56             /* "page ready" received */
    .set PC_WAKEALL, 64           /* wake-alls received */
    .set PC_MSRVAL, 72            /* what we write to enable */
    .set PC_RR, 80                /* round-robin position */
    .set PC_IDLE_WAIT, 88         /* token the idle loop waits on (0: none) */
    .set PC_COUNT, 96             /* vCPU count */
    .set PC_STRAY, 104            /* page ready for a token nobody sleeps on */
    .set PCPU_SIZE, 128

/* task */
    .set T_RSP, 0
    .set T_STATE, 8               /* 0 runnable, 1 sleeping */
    .set T_TOKEN, 16
    .set T_NAME, 24               /* 16 bytes */
    .set T_ITER, 40
    .set T_ID, 48
    .set T_SIZE, 64

/* the saved frame: our 15 pushes, the error code, the CPU's frame */
    .set F_R15, 0
    .set F_RAX, 112
    .set F_ERR, 120
    .set F_RIP, 128
    .set F_CS, 136
    .set F_RFLAGS, 144
    .set F_RSP, 152
    .set F_SS, 160
    .set F_SIZE, 168

    .macro SAVE_REGS
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

    .macro PUTS str
    pushq %rdi
    movq $.Ls\@, %rdi
    call puts
    popq %rdi
    .pushsection .rodata
.Ls\@: .asciz "\str"
    .popsection
    .endm

    .macro PUTDEC val
    pushq %rdi
    movq \val, %rdi
    call putdec
    popq %rdi
    .endm

    .macro PUTHEX val
    pushq %rdi
    movq \val, %rdi
    call puthex
    popq %rdi
    .endm

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cmpq $MAX_CPUS, %rdi
    jb 1f
2:  cli                                 /* more vCPUs than this guest handles: stay out */
    hlt
    jmp 2b
1:  movq %rdi, %r12                     /* r12 = vCPU index, r13 = vCPU count */
    movq %rsi, %r13
    imulq $PCPU_SIZE, %r12, %rbx
    addq $percpu, %rbx                  /* rbx = this vCPU's area */
    movq %rbx, PC_SELF(%rbx)
    movq %r12, PC_INDEX(%rbx)
    movq %r13, PC_COUNT(%rbx)
    movl $MSR_GS_BASE, %ecx
    movq %rbx, %rax
    movq %rbx, %rdx
    shrq $32, %rdx
    wrmsr

    /* The IDT: every vCPU writes the same gates (idempotent, so nobody waits). */
    xorl %edi, %edi
3:  movq %rdi, %rsi
    shlq $4, %rsi
    addq $exc_stubs, %rsi
    call set_gate
    incl %edi
    cmpl $32, %edi
    jb 3b
    movl $13, %edi
    movq $gp_entry, %rsi
    call set_gate
    movl $14, %edi
    movq $pf_entry, %rsi
    call set_gate
    movl $YIELD_VECTOR, %edi
    movq $yield_entry, %rsi
    call set_gate
    lidt idtr

    /* Tasks: struct, name "vN.taskMM", and a first frame that starts task_main. */
    imulq $(NTASKS * T_SIZE), %r12, %r14
    addq $tasks, %r14                   /* r14 = this vCPU's task array */
    movq %r14, PC_TASKS(%rbx)
    xorl %r15d, %r15d                   /* r15 = task id */
4:  movq %r15, %rdi
    shlq $6, %rdi                       /* T_SIZE */
    addq %r14, %rdi                     /* rdi = task */
    movq %r15, T_ID(%rdi)
    movq $0, T_STATE(%rdi)
    movq $0, T_ITER(%rdi)
    movb $'v', T_NAME(%rdi)
    movb %r12b, %al
    addb $'0', %al
    movb %al, T_NAME + 1(%rdi)
    movb $'.', T_NAME + 2(%rdi)
    movl $0x6b736174, T_NAME + 3(%rdi)  /* "task" */
    movq %r15, %rax
    xorl %edx, %edx
    movl $10, %ecx
    divq %rcx
    addb $'0', %al
    addb $'0', %dl
    movb %al, T_NAME + 7(%rdi)
    movb %dl, T_NAME + 8(%rdi)
    movb $0, T_NAME + 9(%rdi)
    /* stack top of task (cpu, id) */
    movq %r12, %rax
    imulq $NTASKS, %rax
    addq %r15, %rax
    incq %rax
    imulq $TASK_STACK, %rax
    addq $task_stacks, %rax             /* rax = stack top (16-aligned) */
    movq $task_main, %rsi
    movl $0x202, %edx                   /* IF = 1 */
    call make_frame                     /* rax = frame; rdi = task -> its RDI */
    movq %rax, T_RSP(%rdi)
    incq %r15
    cmpq $NTASKS, %r15
    jb 4b
    /* the idle loop's first frame */
    movq %r12, %rax
    incq %rax
    imulq $IDLE_STACK, %rax
    addq $idle_stacks, %rax
    movq $idle_loop, %rsi
    movl $0x2, %edx                     /* IF = 0: the loop does sti; hlt itself */
    xorl %edi, %edi
    call make_frame
    movq %rax, PC_IDLE_RSP(%rbx)

    /* Async PF: only if the hypervisor says KVM and has KVM_FEATURE_ASYNC_PF. */
    movq %r12, %rax
    shlq $6, %rax
    addq $apf_areas, %rax
    movq %rax, PC_AREA(%rbx)
    orq $(APF_ENABLED | APF_SEND_ALWAYS), %rax
    movq %rax, PC_MSRVAL(%rbx)
    movl $0x40000000, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x4b4d564b, %ebx              /* "KVMK" */
    movq %gs:PC_SELF, %rbx              /* cpuid clobbered it */
    jne no_apf
    movl $0x40000001, %eax
    xorl %ecx, %ecx
    cpuid
    testl $(1 << 4), %eax
    movq %gs:PC_SELF, %rbx              /* cpuid clobbered it */
    jz no_apf
    PUTS "vCPU "
    PUTDEC %r12
    PUTS ": async PF area at "
    PUTHEX PC_AREA(%rbx)
    PUTS ", "
    PUTDEC $NTASKS
    PUTS " tasks\n"
    call apf_enable
    jmp start_tasks
no_apf:
    PUTS "vCPU "
    PUTDEC %r12
    PUTS ": no KVM async PF, running without\n"
    movq $0, PC_MSRVAL(%rbx)
start_tasks:
    movq PC_TASKS(%rbx), %rdi
    movq $NTASKS - 1, PC_RR(%rbx)
    jmp schedule_from_boot
    .size _start, . - _start

    .text
/* rax = stack top, rsi = RIP, rdx = RFLAGS, rdi = the new context's RDI -> rax = frame */
make_frame:
    pushq %rcx
    subq $F_SIZE, %rax
    movq %rax, %rcx
    xorl %r8d, %r8d
1:  movq $0, (%rcx, %r8, 8)
    incl %r8d
    cmpl $(F_SIZE / 8), %r8d
    jb 1b
    movq %rdi, 72(%rax)                 /* saved RDI (push order: rdi is the 10th from the top) */
    movq %rsi, F_RIP(%rax)
    movq $KERNEL_CS, F_CS(%rax)
    movq %rdx, F_RFLAGS(%rax)
    leaq F_SIZE(%rax), %rcx
    movq %rcx, F_RSP(%rax)
    movq $KERNEL_DS, F_SS(%rax)
    popq %rcx
    ret

/* edi = vector, rsi = handler: a present 64-bit interrupt gate, DPL 0 */
set_gate:
    pushq %rax
    pushq %rdx
    movq %rdi, %rax
    shlq $4, %rax
    addq $idt, %rax
    movw %si, 0(%rax)
    movw $KERNEL_CS, 2(%rax)
    movw $0x8e00, 4(%rax)
    movq %rsi, %rdx
    shrq $16, %rdx
    movw %dx, 6(%rax)
    shrq $16, %rdx
    movl %edx, 8(%rax)
    movl $0, 12(%rax)
    popq %rdx
    popq %rax
    ret

/* enable async PF on this vCPU (RAX, RCX, RDX clobbered) */
apf_enable:
    movq %gs:PC_MSRVAL, %rax
    movq %rax, %rdx
    shrq $32, %rdx
    movl $MSR_APF, %ecx
    .globl apf_enable_wrmsr
apf_enable_wrmsr:
    wrmsr                               /* #GP on the seed profile: gp_entry drops SEND_ALWAYS */
    ret

/* ---- tasks --------------------------------------------------------------------------------- */
/* rdi = task.  Touch a work page, compute, sometimes report, yield; forever. */
task_main:
    movq %rdi, %r14                     /* r14 = task */
    movq %gs:PC_INDEX, %r12
    movq T_ID(%r14), %r13
1:  incq T_ITER(%r14)
    movq T_ITER(%r14), %r15
    /* page = (iter * 7 + id * 5 + cpu * 3) % NPAGES */
    leaq (%r15, %r15, 2), %rax
    leaq (%rax, %r15, 4), %rax          /* iter * 7 */
    leaq (%r13, %r13, 4), %rcx
    addq %rcx, %rax
    leaq (%r12, %r12, 2), %rcx
    addq %rcx, %rax
    xorl %edx, %edx
    movl $NPAGES, %ecx
    divq %rcx
    movq %rdx, %rbp
    shlq $12, %rbp
    /* slot in the page: (cpu * NTASKS + id) * 16 mod 4096 */
    movq %r12, %rax
    imulq $NTASKS, %rax
    addq %r13, %rax
    shlq $4, %rax
    andl $0xff0, %eax
    addq %rax, %rbp
    addq $WORK_BASE, %rbp               /* rbp = the word this iteration works on */
    /* every 16th iteration, task 0 touches it with interrupts off */
    testq %r13, %r13
    jnz 2f
    testq $15, %r15
    jnz 2f
    cli
    .globl touch_irqs_off
touch_irqs_off:
    incq (%rbp)                         /* IF = 0: a swapped page stalls the vCPU synchronously */
    sti
    jmp 3f
2:  .globl touch
touch:
    incq (%rbp)                         /* may fault: async PF */
3:  /* compute, keeping the running value in the page */
    movq (%rbp), %rax
    movl $COMPUTE, %ecx
4:  movq %rax, %rdx
    shlq $13, %rdx
    xorq %rdx, %rax
    movq %rax, %rdx
    shrq $7, %rdx
    xorq %rdx, %rax
    decl %ecx
    jnz 4b
    movq %rax, 8(%rbp)
    /* vCPU 1 task 1 goes offline and back now and then */
    cmpq $1, %r13
    jne 5f
    movq %gs:PC_COUNT, %rax
    cmpq $1, %rax
    seta %al
    movzbl %al, %eax                    /* the vCPU that does it: 1, or 0 when alone */
    cmpq %rax, %r12
    jne 5f
    movq %r15, %rax
    xorl %edx, %edx
    movl $HOTPLUG_EVERY, %ecx
    divq %rcx
    testq %rdx, %rdx
    jnz 5f
    call cpu_offline_online
5:  /* task 0 reports now and then */
    testq %r13, %r13
    jnz 6f
    testq $(REPORT_EVERY - 1), %r15
    jnz 6f
    call report
6:  int $YIELD_VECTOR
    jmp 1b

/* APF off with work outstanding, a pause, APF on again (the host queues a wake-all) */
cpu_offline_online:
    cmpq $0, %gs:PC_MSRVAL
    je 2f
    /* go offline while work is outstanding: yield until another task of ours sleeps */
    movl $64, %r8d
3:  movq %gs:PC_TASKS, %rsi
    xorl %ecx, %ecx
4:  cmpq $0, T_STATE(%rsi)
    jne 5f
    addq $T_SIZE, %rsi
    incl %ecx
    cmpl $NTASKS, %ecx
    jb 4b
    int $YIELD_VECTOR
    decl %r8d
    jnz 3b
5:
    PUTS "vCPU "
    PUTDEC %r12
    PUTS ": offline (async PF off)\n"
    cli
    movl $MSR_APF, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    .globl apf_disable_wrmsr
apf_disable_wrmsr:
    wrmsr
    movl $2000, %ecx
1:  pause
    decl %ecx
    jnz 1b
    call apf_enable
    sti
    PUTS "vCPU "
    PUTDEC %r12
    PUTS ": online (async PF on)\n"
2:  ret

report:
    PUTS "vCPU "
    PUTDEC %r12
    PUTS ": iteration "
    PUTDEC %r15
    PUTS ", not present "
    PUTDEC %gs:PC_NP
    PUTS ", ready "
    PUTDEC %gs:PC_READY
    PUTS ", wake-all "
    PUTDEC %gs:PC_WAKEALL
    PUTS "\n"
    ret

idle_loop:
    sti
    hlt
    cli
    jmp idle_loop

/* ---- interrupts ---------------------------------------------------------------------------- */
    .balign 16
exc_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp unexpected
    .set vec, vec + 1
    .endr

unexpected:                             /* [rsp] = vector, then error code, CPU frame */
    popq %rsi
    PUTS "unexpected exception "
    PUTDEC %rsi
    movq 8(%rsp), %rax
    PUTS " at "
    PUTHEX %rax
    PUTS "\n"
    movl $0x100, %eax
    addl %esi, %eax
    outl %eax, $PORT_EXIT
1:  cli
    hlt
    jmp 1b

gp_entry:
    SAVE_REGS
    cmpq $apf_enable_wrmsr, F_RIP(%rsp)
    jne 1f
    /* The seed profile has no SEND_ALWAYS (bit 1 reserved): enable without it. */
    andq $~APF_SEND_ALWAYS, F_RAX(%rsp)
    andq $~APF_SEND_ALWAYS, %gs:PC_MSRVAL
    PUTS "vCPU "
    PUTDEC %gs:PC_INDEX
    PUTS ": MSR refused SEND_ALWAYS (#GP), enabling without it\n"
    jmp restore
1:  movq F_RIP(%rsp), %rax             /* not ours */
    PUTS "unexpected #GP at "
    PUTHEX %rax
    PUTS "\n"
    movl $0x10d, %eax
    outl %eax, $PORT_EXIT
2:  cli
    hlt
    jmp 2b

yield_entry:
    pushq $0                            /* the error-code slot */
    SAVE_REGS
    movq %gs:PC_SELF, %rbx
    movq PC_CUR(%rbx), %rdi
    testq %rdi, %rdi
    jz restore
    movq %rsp, T_RSP(%rdi)
    jmp schedule

pf_entry:
    SAVE_REGS
    movq %cr2, %r12
    movq %gs:PC_SELF, %rbx
    movq PC_AREA(%rbx), %r8
    movl (%r8), %eax                    /* the reason: read it and zero it before anything */
    movl $0, (%r8)                      /* that can take another #PF */
    cmpl $1, %eax
    je not_present
    cmpl $2, %eax
    je page_ready
    movq F_RIP(%rsp), %rax
    PUTS "real #PF (reason 0) at "
    PUTHEX %rax
    PUTS " cr2 "
    PUTHEX %r12
    PUTS "\n"
    movl $0x10e, %eax
    outl %eax, $PORT_EXIT
1:  cli
    hlt
    jmp 1b

not_present:
    incq PC_NP(%rbx)
    movq PC_CUR(%rbx), %rdi
    testq %rdi, %rdi
    jz 2f
    movq %r12, T_TOKEN(%rdi)            /* the task sleeps on the token */
    movq $1, T_STATE(%rdi)
    movq %rsp, T_RSP(%rdi)
    jmp schedule
2:  /* the idle loop itself: halt until the token is ready (as the real guest does for tasks
       that cannot schedule) */
    movq %r12, PC_IDLE_WAIT(%rbx)
3:  sti
    hlt
    cli
    cmpq $0, PC_IDLE_WAIT(%rbx)
    jne 3b
    jmp restore

page_ready:
    movq PC_TASKS(%rbx), %rsi
    cmpl $0xffffffff, %r12d
    je wake_all
    cmpq %r12, PC_IDLE_WAIT(%rbx)
    jne 1f
    movq $0, PC_IDLE_WAIT(%rbx)
    incq PC_READY(%rbx)
    jmp woke
1:  xorl %ecx, %ecx
2:  cmpq $1, T_STATE(%rsi)
    jne 3f
    cmpq %r12, T_TOKEN(%rsi)
    jne 3f
    movq $0, T_STATE(%rsi)
    incq PC_READY(%rbx)
    jmp woke
3:  addq $T_SIZE, %rsi
    incl %ecx
    cmpl $NTASKS, %ecx
    jb 2b
    incq PC_STRAY(%rbx)
    jmp woke
wake_all:
    incq PC_WAKEALL(%rbx)
    movq $0, PC_IDLE_WAIT(%rbx)
    xorl %ecx, %ecx
1:  movq $0, T_STATE(%rsi)
    addq $T_SIZE, %rsi
    incl %ecx
    cmpl $NTASKS, %ecx
    jb 1b
woke:
    cmpq $0, PC_CUR(%rbx)
    jne restore                         /* a task was running: it goes on */
    movq %rsp, PC_IDLE_RSP(%rbx)        /* the idle loop was: run the woken task now */
    jmp schedule

/* Run the next runnable task after the current one (round robin), or the idle loop. */
schedule:
schedule_from_boot:
    movq %gs:PC_SELF, %rbx
    movq PC_TASKS(%rbx), %rsi
    movq PC_RR(%rbx), %rcx
    movl $NTASKS, %edx
1:  incq %rcx
    cmpq $NTASKS, %rcx
    jb 2f
    xorl %ecx, %ecx
2:  movq %rcx, %rdi
    shlq $6, %rdi
    addq %rsi, %rdi
    cmpq $0, T_STATE(%rdi)
    je 3f
    decl %edx
    jnz 1b
    movq $0, PC_CUR(%rbx)               /* nothing runnable: idle */
    movq PC_INDEX(%rbx), %rax
    movq $idle_name, current_task(, %rax, 8)
    movq PC_IDLE_RSP(%rbx), %rsp
    jmp restore
3:  movq %rcx, PC_RR(%rbx)
    movq %rdi, PC_CUR(%rbx)
    movq PC_INDEX(%rbx), %rax
    leaq T_NAME(%rdi), %rdx
    movq %rdx, current_task(, %rax, 8)
    movq T_RSP(%rdi), %rsp
restore:
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
    addq $8, %rsp                       /* error code */
    iretq

/* ---- console ------------------------------------------------------------------------------- */
puts:                                   /* rdi = string; registers kept */
    pushq %rax
    pushq %rsi
    movq %rdi, %rsi
1:  movb (%rsi), %al
    testb %al, %al
    jz 2f
    outb %al, $PORT_CONSOLE
    incq %rsi
    jmp 1b
2:  popq %rsi
    popq %rax
    ret

putdec:                                 /* rdi = value */
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    subq $32, %rsp
    leaq 31(%rsp), %rsi
    movb $0, (%rsi)
    movq %rdi, %rax
    movl $10, %ecx
1:  xorl %edx, %edx
    divq %rcx
    addb $'0', %dl
    decq %rsi
    movb %dl, (%rsi)
    testq %rax, %rax
    jnz 1b
    movq %rsi, %rdi
    call puts
    addq $32, %rsp
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    ret

puthex:                                 /* rdi = value, "0x..." */
    pushq %rax
    pushq %rcx
    pushq %rdx
    movb $'0', %al
    outb %al, $PORT_CONSOLE
    movb $'x', %al
    outb %al, $PORT_CONSOLE
    movl $60, %ecx
    xorl %edx, %edx
1:  movq %rdi, %rax
    shrq %cl, %rax
    andl $15, %eax
    testl %ecx, %ecx
    jz 2f
    testl %edx, %edx
    jnz 2f
    testl %eax, %eax
    jz 3f
2:  movl $1, %edx
    movb hexdigits(%rax), %al
    outb %al, $PORT_CONSOLE
3:  subl $4, %ecx
    jns 1b
    popq %rdx
    popq %rcx
    popq %rax
    ret

    .section .rodata
hexdigits:
    .ascii "0123456789abcdef"
idle_name:
    .asciz "idle"

    .data
    .balign 16
idtr:
    .word 256 * 16 - 1
    .quad idt
    .balign 8
    .globl current_task
    .type current_task, @object
current_task:
    .rept MAX_CPUS
    .quad idle_name
    .endr
    .size current_task, . - current_task

    .bss
    .balign 4096
idt:
    .skip 256 * 16
    .balign 64
    .globl apf_areas
    .type apf_areas, @object
apf_areas:                              /* 64 bytes per vCPU: u32 reason, then unused */
    .skip 64 * MAX_CPUS
    .size apf_areas, . - apf_areas
    .balign 64
    .globl percpu
percpu:
    .skip PCPU_SIZE * MAX_CPUS
    .balign 64
    .globl tasks
tasks:
    .skip T_SIZE * NTASKS * MAX_CPUS
    .balign 16
task_stacks:
    .skip TASK_STACK * NTASKS * MAX_CPUS
    .balign 16
idle_stacks:
    .skip IDLE_STACK * MAX_CPUS
