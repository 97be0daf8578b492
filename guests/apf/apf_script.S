/*
 * apf_script: a data-driven async-page-fault guest.  One vCPU (`script_vcpu`, default 0) runs a
 * script of operations that the test writes into `ops` before the run; every other vCPU parks
 * (cli; hlt).  The guest behaves like the 2.6.38 Linux guest side (arch/x86/kernel/kvm.c):
 *
 *   #PF handler (hook on vector 14, interrupt gate, IF = 0): reads the u32 `reason` of `apf_area`
 *   and zeroes it first thing, then logs the event (pf_log) and
 *     reason 0  an ordinary #PF: cannot happen (guest paging stays off) -> FAIL 0x30
 *     reason 1  page not present, CR2 = token.  What the "task" does depends on `pf_mode`:
 *               PF_SLEEP  sleep on the token: `sti; hlt` until a page-ready for it (or a wake-all
 *                         that arrives after the wait began) is in ready_tokens (the kernel's
 *                         non-schedulable wait; a wake that came first leaves a dummy: the log)
 *               PF_IGNORE return at once: the access is retried (a doublefault for the host)
 *               PF_SKIP   skip the faulting access (every touch instruction is 3 bytes long) so
 *                         the "task" goes on: faults pile up without waiting
 *     reason 2  page ready, CR2 = token (0xffffffff = wake all): appended to ready_tokens
 *     other     FAIL 0x31
 *
 * Operations (32 bytes each: op, a, b, c; results[i] gets 4 u64 for op i):
 *   OP_END                      PASS (script_done = 1)
 *   OP_WRMSR     a=msr b=value  r0 = 1 if #GP, r1 = #GP error code
 *   OP_RDMSR     a=msr          r0 = value (0x5a5a... if it faulted), r1 = 1 if #GP
 *   OP_CPUID     a=leaf         r0..r3 = EAX, EBX, ECX, EDX
 *   OP_TOUCH     a=addr b=flags c=value   one access; r0 = RAX after it (the value read, or
 *                TOUCH_MARK when the access was skipped); flags: T_USER (CPL 3, else CPL 0),
 *                T_IF (RFLAGS.IF = 1), T_WRITE (store c instead of load), T_SHADOW (CPL 0: the
 *                load is the instruction right after `sti`, inside the interrupt shadow)
 *   OP_TOUCHLIST a=first b=count c=flags  loads from addr_list[a .. a+b-1] in a loop (T_USER,
 *                T_IF); the values go to vals[a ..] (TOUCH_MARK for a skipped access)
 *   OP_WAIT_READY a=n           `sti; hlt` at CPL 0 until ready_n >= n; r0 = TSC before the
 *                first sti, r1 = TSC after
 *   OP_SPIN      a=loops b=flags  a busy loop with IF = (flags & T_IF); r0/r1 = TSC before/after
 *   OP_MARK      a=value        wrmsr IA32_TSC_AUX = a: a marker the test's event sink can act
 *                on (an msr_write event outside the engine, where page-outs are safe)
 *   OP_MODE      a=pf_mode      set pf_mode
 *   OP_TIMER     a=count b=addr  x2APIC one-shot timer (vector 0x40, divide by 1): arm with
 *                initial count a (0 stops it); b != 0: the timer handler does `sti`, loads from b
 *                (into timer_val) and `cli` (a softirq touching memory with IF = 1)
 *   OP_HLT                      `cli; hlt`: only something that makes the vCPU runnable without
 *                an interrupt (in KVM: a non-empty async_pf.done) gets past it; r0 = TSC after
 */
    .include "testlib.inc"

    .set MSR_KVM_ASYNC_PF_EN, 0x4b564d02
    .set OP_SIZE, 32
    .set MAX_OPS, 128
    .set PF_ENTRY, 64
    .set PF_LOG_MAX, 256
    .set READY_MAX, 256
    .set LIST_MAX, 256
    .set TIMER_VEC, 0x40
    .set SYS_VEC, 0x80
    .set TOUCH_MARK, 0x70c470c470c470c4

    .set OP_END, 0
    .set OP_WRMSR, 1
    .set OP_RDMSR, 2
    .set OP_CPUID, 3
    .set OP_TOUCH, 4
    .set OP_TOUCHLIST, 5
    .set OP_WAIT_READY, 6
    .set OP_SPIN, 7
    .set OP_MARK, 8
    .set OP_MODE, 9
    .set OP_TIMER, 10
    .set OP_HLT, 11
    .set N_OPS, 12

    .set T_USER, 1
    .set T_IF, 2
    .set T_WRITE, 4
    .set T_SHADOW, 8

    .set PF_SLEEP, 0
    .set PF_IGNORE, 1
    .set PF_SKIP, 2

    /* pf_log entry (64 bytes) */
    .set L_REASON, 0
    .set L_CR2, 8
    .set L_ERR, 16
    .set L_CS, 24
    .set L_RIP, 32
    .set L_RFLAGS, 40
    .set L_TSC, 48
    .set L_OP, 56

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cmpq script_vcpu(%rip), %rdi
    je 1f
2:  cli                                 /* not the script vCPU: park for good */
    hlt
    jmp 2b
1:  leaq kstack_top(%rip), %rsp
    call tl_init
    /* TSS.RSP0 of this vCPU: a separate stack for events from CPL 3 */
    movq %rdi, %rax
    imulq $TSS_STRIDE, %rax
    leaq istack_top(%rip), %rdx
    movq %rdx, TSS_BASE + TSS_RSP0(%rax)

    movl $SYS_VEC, %edi                 /* int 0x80: the way back from a touch (CPL 3 or 0) */
    movl $GATE_INT_USER, %esi
    xorl %edx, %edx
    call tl_set_gate
    movl $SYS_VEC, %edi
    leaq sys_hook(%rip), %rsi
    call tl_set_hook
    movl $EXC_PF, %edi
    leaq pf_hook(%rip), %rsi
    call tl_set_hook
    movl $TIMER_VEC, %edi
    leaq timer_hook(%rip), %rsi
    call tl_set_hook

    MSR_WRITE X2APIC_SVR, 0x1ff
    MSR_WRITE X2APIC_TDCR, 0xb
    MSR_WRITE X2APIC_LVT_TIMER, TIMER_VEC

    movq $0, cur_op(%rip)

/* ---- the interpreter ------------------------------------------------------------------------ */
next_op:
    cli
    movq cur_op(%rip), %r15
    cmpq $MAX_OPS, %r15
    jb 1f
    FAIL 0x01                           /* ran off the end of the script */
1:  movq %r15, %r14
    shlq $5, %r14
    leaq results(%rip), %r13
    addq %r14, %r13                     /* r13 = &results[i] */
    leaq ops(%rip), %rax
    addq %rax, %r14                     /* r14 = &ops[i] */
    movq 0(%r14), %rax
    cmpq $N_OPS, %rax
    jb 2f
    FAIL 0x02                           /* unknown op */
2:  leaq op_table(%rip), %rdx
    jmp *(%rdx, %rax, 8)

op_done:
    incq cur_op(%rip)
    jmp next_op

op_end:
    movq $1, script_done(%rip)
    PUTS "script done, "
    PUTDEC pf_log_n(%rip)
    PUTS " #PF\n"
    PASS

op_wrmsr:
    EXPECT 1f
    movl 8(%r14), %ecx
    movq 16(%r14), %rax
    movq %rax, %rdx
    shrq $32, %rdx
    wrmsr
    movq $0, %gs:PC_RESUME              /* no fault: the resume point must not catch a later one */
1:  xorl %eax, %eax
    cmpq $EXC_GP, %gs:PC_VECTOR
    sete %al
    movq %rax, 0(%r13)
    movq %gs:PC_ERROR, %rax
    movq %rax, 8(%r13)
    jmp op_done

op_rdmsr:
    EXPECT 1f
    movl 8(%r14), %ecx
    movl $0x5a5a5a5a, %eax
    movl $0x5a5a5a5a, %edx
    rdmsr
    movq $0, %gs:PC_RESUME
1:  shlq $32, %rdx
    movl %eax, %eax
    orq %rdx, %rax
    movq %rax, 0(%r13)
    xorl %eax, %eax
    cmpq $EXC_GP, %gs:PC_VECTOR
    sete %al
    movq %rax, 8(%r13)
    jmp op_done

op_cpuid:
    movl 8(%r14), %eax
    xorl %ecx, %ecx
    cpuid
    movq %rax, 0(%r13)
    movq %rbx, 8(%r13)
    movq %rcx, 16(%r13)
    movq %rdx, 24(%r13)
    jmp op_done

op_mark:
    movl $MSR_TSC_AUX, %ecx
    movq 8(%r14), %rax
    xorl %edx, %edx
    wrmsr
    jmp op_done

op_mode:
    movq 8(%r14), %rax
    movq %rax, pf_mode(%rip)
    jmp op_done

op_timer:
    movq 16(%r14), %rax
    movq %rax, timer_touch(%rip)
    MSR_WRITE_REG X2APIC_TMICT, 8(%r14)
    jmp op_done

op_spin:
    RDTSC64
    movq %rax, 0(%r13)
    movq 8(%r14), %rcx
    testq $T_IF, 16(%r14)
    jz 1f
    sti
1:  decq %rcx
    jnz 1b
    cli
    RDTSC64
    movq %rax, 8(%r13)
    jmp op_done

op_hlt:
    cli
    .globl hlt_if0
hlt_if0:
    hlt
    RDTSC64
    movq %rax, 0(%r13)
    jmp op_done

op_wait_ready:
    RDTSC64
    movq %rax, 0(%r13)
1:  cli
    movq ready_n(%rip), %rax
    cmpq 8(%r14), %rax
    jae 2f
    sti
    hlt
    jmp 1b
2:  RDTSC64
    movq %rax, 8(%r13)
    jmp op_done

    /* Touches run the code at touch_code / list_code, at CPL 3 (through tl_enter_user) or at
     * CPL 0 (a plain jump); both end with `int 0x80`, whose hook abandons the frame and
     * continues at touch_return on the interpreter's stack (krsp). */
op_touch:
    movq 8(%r14), %rbx                  /* address */
    movq 24(%r14), %r10                 /* value to store */
    movq 16(%r14), %r12                 /* flags */
    xorl %r9d, %r9d
    testq $T_WRITE, %r12
    setnz %r9b
    movq %rsp, krsp(%rip)
    leaq touch_code(%rip), %rdi
    testq $T_SHADOW, %r12
    jz 1f
    leaq shadow_touch(%rip), %rdi
    jmp *%rdi                           /* sti is its first instruction */
1:  jmp enter_touch

op_touchlist:
    movq 8(%r14), %rax
    cmpq $LIST_MAX, %rax
    jae 9f
    movq 16(%r14), %r9                  /* count */
    leaq (%rax, %r9), %rdx
    cmpq $LIST_MAX, %rdx
    ja 9f
    testq %r9, %r9
    jz 9f
    leaq addr_list(%rip), %rbx
    leaq (%rbx, %rax, 8), %rbx
    leaq vals(%rip), %r10
    leaq (%r10, %rax, 8), %r10
    movq 24(%r14), %r12                 /* flags */
    movq %rsp, krsp(%rip)
    leaq list_code(%rip), %rdi
    jmp enter_touch
9:  FAIL 0x03                           /* bad list range */

enter_touch:                            /* rdi = code, r12 = flags */
    testq $T_USER, %r12
    jnz 1f
    testq $T_IF, %r12
    jz 2f
    sti                                 /* the jmp is in the shadow, the access is not */
2:  jmp *%rdi
1:  leaq ustack_top(%rip), %rsi
    movl $RFLAGS_FIXED, %edx
    testq $T_IF, %r12
    jz 3f
    orl $RFLAGS_IF, %edx
3:  call tl_enter_user

touch_return:                           /* from sys_hook, on krsp, IF = 0, CPL 0 */
    cli
    movq cur_op(%rip), %r15
    movq %r15, %r13
    shlq $5, %r13
    leaq results(%rip), %rax
    addq %rax, %r13
    movq user_rax(%rip), %rax
    movq %rax, 0(%r13)
    jmp op_done

/* ---- the touch code (CPL 3 or CPL 0); every access instruction is 3 bytes --------------- */
    .globl touch_code
touch_code:                             /* rbx = address, r9 = store?, r10 = value */
    movabsq $TOUCH_MARK, %rax
    testq %r9, %r9
    jnz 1f
    .globl touch_load
touch_load:
    movq (%rbx), %rax
    int $SYS_VEC
1:
    .globl touch_store
touch_store:
    movq %r10, (%rbx)
    movq %r10, %rax
    int $SYS_VEC

    .globl shadow_touch
shadow_touch:                           /* CPL 0: the load sits in the STI shadow */
    movabsq $TOUCH_MARK, %rax
    sti
    .globl shadow_load
shadow_load:
    movq (%rbx), %rax
    cli
    int $SYS_VEC

    .globl list_code
list_code:                              /* rbx = &addr_list[a], r10 = &vals[a], r9 = count */
1:  movq (%rbx), %rdx
    movabsq $TOUCH_MARK, %rax
    .globl list_load
list_load:
    movq (%rdx), %rax
    movq %rax, (%r10)
    addq $8, %rbx
    addq $8, %r10
    decq %r9
    jnz 1b
    xorl %eax, %eax
    int $SYS_VEC

/* ---- hooks ---------------------------------------------------------------------------------- */
sys_hook:                               /* int 0x80: rdi = frame, rsi = per-vCPU area */
    movq F_RAX(%rdi), %rax
    movq %rax, user_rax(%rip)
    movq krsp(%rip), %rax
    movq %rax, PC_RESUME_RSP(%rsi)
    movq $touch_return, PC_RESUME(%rsi)
    ret

timer_hook:
    incq timer_ticks(%rip)
    movq timer_touch(%rip), %rdx
    testq %rdx, %rdx
    jz 1f
    sti
    nop
    .globl timer_load
timer_load:
    movq (%rdx), %rax
    cli
    movq %rax, timer_val(%rip)
1:  jmp tl_eoi_hook

    .globl pf_hook
pf_hook:                                /* rdi = frame, rsi = per-vCPU area; IF = 0 */
    pushq %rbx
    pushq %r12
    pushq %r13
    movq %rdi, %rbx
    movl apf_area(%rip), %r12d          /* the reason: read it ... */
    movl $0, apf_area(%rip)             /* ... and reset it before anything can fault again */
    movl PC_CR2(%rsi), %r13d            /* the token (CR2 bits 31:0) */
    movq pf_log_n(%rip), %rcx
    cmpq $PF_LOG_MAX, %rcx
    jae 1f
    shlq $6, %rcx
    leaq pf_log(%rip), %rdx
    addq %rdx, %rcx
    movq %r12, L_REASON(%rcx)
    movq PC_CR2(%rsi), %rax
    movq %rax, L_CR2(%rcx)
    movq F_ERR(%rbx), %rax
    movq %rax, L_ERR(%rcx)
    movq F_CS(%rbx), %rax
    movq %rax, L_CS(%rcx)
    movq F_RIP(%rbx), %rax
    movq %rax, L_RIP(%rcx)
    movq F_RFLAGS(%rbx), %rax
    movq %rax, L_RFLAGS(%rcx)
    movq cur_op(%rip), %rax
    movq %rax, L_OP(%rcx)
    pushq %rcx
    RDTSC64
    popq %rcx
    movq %rax, L_TSC(%rcx)
1:  incq pf_log_n(%rip)
    cmpl $2, %r12d
    je pf_ready
    cmpl $1, %r12d
    je pf_not_present
    testl %r12d, %r12d
    jnz 2f
    PUTS "ordinary #PF, cr2 "
    PUTHEX %gs:PC_CR2
    PUTS "\n"
    FAIL 0x30
2:  FAIL 0x31

pf_ready:
    movq ready_n(%rip), %rcx
    cmpq $READY_MAX, %rcx
    jb 1f
    FAIL 0x32
1:  leaq ready_tokens(%rip), %rdx
    movq %r13, (%rdx, %rcx, 8)
    incq ready_n(%rip)
    jmp pf_out

pf_not_present:
    incq np_n(%rip)
    movq pf_mode(%rip), %rax
    cmpq $PF_SKIP, %rax
    jne 1f
    addq $3, F_RIP(%rbx)                /* skip the 3-byte access: the task goes on */
    jmp pf_out
1:  cmpq $PF_IGNORE, %rax
    je pf_out
    /* PF_SLEEP: wait for the page-ready of token r13, or a wake-all after this point */
    movq ready_n(%rip), %r12            /* wake-alls from here on count */
2:  cli
    leaq ready_tokens(%rip), %rdx
    xorl %ecx, %ecx
3:  cmpq ready_n(%rip), %rcx
    jae 5f
    movq (%rdx, %rcx, 8), %rax
    cmpq %r13, %rax
    je 6f
    cmpq %r12, %rcx
    jb 4f
    movl $0xffffffff, %r8d
    cmpq %r8, %rax
    je 6f
4:  incq %rcx
    jmp 3b
5:  incq sleeps(%rip)
    sti
    hlt
    jmp 2b
6:  cli
pf_out:
    popq %r13
    popq %r12
    popq %rbx
    ret

/* ---- data ----------------------------------------------------------------------------------- */
    .section .rodata
    .balign 8
op_table:
    .quad op_end, op_wrmsr, op_rdmsr, op_cpuid, op_touch, op_touchlist, op_wait_ready
    .quad op_spin, op_mark, op_mode, op_timer, op_hlt

    .section .data
    .balign 64
    .globl apf_area
apf_area:                               /* the shared area: u32 reason (64-byte aligned) */
    .fill 64, 1, 0
    .balign 8
    .globl script_vcpu
script_vcpu:    .quad 0                 /* parameter: the vCPU that runs the script */
    .globl pf_mode
pf_mode:        .quad PF_SLEEP          /* parameter (and OP_MODE) */
    .globl script_done
script_done:    .quad 0
    .globl cur_op
cur_op:         .quad 0
    .globl pf_log_n
pf_log_n:       .quad 0                 /* #PFs taken (entries beyond PF_LOG_MAX are not kept) */
    .globl np_n
np_n:           .quad 0                 /* reason-1 #PFs */
    .globl ready_n
ready_n:        .quad 0                 /* reason-2 #PFs */
    .globl sleeps
sleeps:         .quad 0                 /* hlt rounds of PF_SLEEP waits */
    .globl timer_ticks
timer_ticks:    .quad 0
    .globl timer_touch
timer_touch:    .quad 0
    .globl timer_val
timer_val:      .quad 0
    .globl user_rax
user_rax:       .quad 0
krsp:           .quad 0

    .section .bss
    .balign 64
    .globl ops
ops:            .skip OP_SIZE * MAX_OPS /* parameter: the script */
    .globl results
results:        .skip 32 * MAX_OPS
    .globl addr_list
addr_list:      .skip 8 * LIST_MAX      /* parameter: addresses for OP_TOUCHLIST */
    .globl vals
vals:           .skip 8 * LIST_MAX
    .globl ready_tokens
ready_tokens:   .skip 8 * READY_MAX
    .globl pf_log
pf_log:         .skip PF_ENTRY * PF_LOG_MAX
    .balign 4096
    .skip 8192
kstack_top:
    .skip 8192
istack_top:
    .skip 4096
ustack_top:
