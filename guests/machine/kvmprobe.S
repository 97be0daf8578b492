/*
 * kvmprobe: which of the architecture's rules this host does not keep (vCPU 0).
 *
 * guests/tools/kvmrun.py runs it under the host's KVM before a test guest, and passes what it
 * finds in the test guest's `tl_quirks` word: the guests then skip exactly those checks. Under
 * apfdbg it must find nothing (tests/machine/test_guests.py), so the probe also checks that the
 * machine keeps every rule a quirk stands for.
 *
 * Console: one `quirk NAME: what was seen` line per rule broken, then `quirks 0x..`, then PASS.
 *
 *  QUIRK_HOST_TSC       a 1000-iteration loop between two rdtsc does not read 2003, or a
 *                       write of IA32_TIME_STAMP_COUNTER does not move rdtsc
 *  QUIRK_KVM_EOI        a non-zero write of the x2APIC EOI register gives no #GP
 *  QUIRK_APIC_ISR       inside the handler of a fixed interrupt, ISR and PPR do not show it
 *  QUIRK_IRQ_WINDOW     with an interrupt pending, `sti; nop` does not take it right after nop
 *  QUIRK_NONCANON_MSR   a wrmsr of a non-canonical address to LSTAR, CSTAR, FS/GS/KERNEL_GS
 *                       base or SYSENTER_ESP/EIP gives no #GP
 *  QUIRK_USER_SEGS      `mov %cs` / `mov %ss` do not read the selectors that iretq to CPL 3,
 *                       or syscall back to CPL 0, loaded
 *  QUIRK_SYSCALL        syscall from CPL 3 does not run its LSTAR entry at CPL 0
 *  QUIRK_USER_INT       int $0x80 from CPL 3 through a DPL 3 gate does not deliver vector 0x80
 */
    .include "testlib.inc"

    .set VEC, 0x60

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    xorl %r15d, %r15d                   /* the quirks found */

    /* --- rdtsc counts instructions; TSC writes move it ------------------------------ */
    rdtsc
    movl %eax, %esi
    movl $1000, %ecx
1:  decl %ecx
    jnz 1b
    rdtsc
    subl %esi, %eax
    cmpl $2003, %eax
    je 2f
    PUTS "quirk host_tsc: 1000 loop iterations read as "
    PUTDEC %rax
    PUTS " TSC ticks, not 2003\n"
    orq $QUIRK_HOST_TSC, %r15
    jmp 3f
2:  MSR_WRITE MSR_TSC, 0x0000010000000000
    RDTSC64
    movabsq $0x0000010000000000, %rbx
    cmpq %rbx, %rax
    jb 4f
    addq $10000000, %rbx
    cmpq %rbx, %rax
    jb 3f
4:  PUTS "quirk host_tsc: a TSC write did not move rdtsc\n"
    orq $QUIRK_HOST_TSC, %r15
3:

    /* --- EOI with a non-zero value --------------------------------------------------- */
    MSR_WRITE X2APIC_SVR, 0x1ff
    EXPECT 1f
    MSR_WRITE X2APIC_EOI, 1
    movq $0, %gs:PC_RESUME
    PUTS "quirk kvm_eoi: a write of 1 to the x2APIC EOI register gave no #GP\n"
    orq $QUIRK_KVM_EOI, %r15
1:

    /* --- a fixed interrupt: ISR/PPR in its handler, and the STI shadow --------------- */
    movl $VEC, %edi
    leaq isr_hook(%rip), %rsi
    call tl_set_hook
    MSR_WRITE X2APIC_SELF_IPI, VEC      /* pending while IF = 0 */
    sti
    nop
after_nop:
    cli
    cmpl $1, %gs:PC_COUNTS+VEC*4
    jne 1f
    cmpq $after_nop, %gs:PC_RIP
    je 2f
1:  PUTS "quirk irq_window: a pending interrupt was not taken right after `sti; nop`\n"
    orq $QUIRK_IRQ_WINDOW, %r15
    sti                                 /* take it now, at the host's next exit */
    hlt
    cli
2:  cmpl $1, %gs:PC_COUNTS+VEC*4
    je 1f
    FAIL 0x10                           /* the interrupt never came */
1:  movq seen_isr(%rip), %rax
    testl $1, %eax                      /* ISR bit VEC % 32 of register VEC / 32 */
    jz 2f
    cmpq $VEC, seen_ppr(%rip)
    je 1f
2:  PUTS "quirk apic_isr: in the handler of vector 0x60, ISR was "
    PUTHEX seen_isr(%rip)
    PUTS " and PPR "
    PUTHEX seen_ppr(%rip)
    PUTS "\n"
    orq $QUIRK_APIC_ISR, %r15
1:

    /* --- non-canonical addresses in the MSRs that hold one --------------------------- */
    movq %gs:PC_SELF, %r14              /* GS.base, to put back if the host took a bad one */
    leaq canon_msrs(%rip), %rbx
5:  movl (%rbx), %r12d
    testl %r12d, %r12d
    jz 6f
    EXPECT 1f
    movl %r12d, %ecx
    xorl %eax, %eax
    movl $0x8000, %edx                  /* 0x0000800000000000 */
    wrmsr
    movl %r12d, %ecx                    /* taken: put a canonical value back first */
    xorl %eax, %eax
    cmpl $MSR_GS_BASE, %ecx
    cmove %r14, %rax
    movq %rax, %rdx
    shrq $32, %rdx
    wrmsr
    movq $0, %gs:PC_RESUME
    PUTS "quirk noncanon_msr: wrmsr "
    PUTHEX %r12
    PUTS " of 0x800000000000 gave no #GP\n"
    orq $QUIRK_NONCANON_MSR, %r15
1:  addq $4, %rbx
    jmp 5b
6:

    /* --- the selectors after iretq to CPL 3 and after syscall back ------------------ */
    MSR_READ MSR_EFER
    orl $EFER_SCE, %eax
    MSR_WRITE_REG MSR_EFER, %rax
    MSR_WRITE MSR_STAR, 0x0010000800000000
    leaq syscall_entry(%rip), %rax
    MSR_WRITE_REG MSR_LSTAR, %rax
    MSR_WRITE MSR_FMASK, RFLAGS_IF
    movl $0x80, %edi
    movl $GATE_INT_USER, %esi
    xorl %edx, %edx
    call tl_set_gate
    movq %rsp, kernel_rsp(%rip)
    EXPECT_JMP back_from_int, %rsp      /* 1: int 0x80 straight from CPL 3 */
    leaq user_int_probe(%rip), %rdi
    leaq ustack_top(%rip), %rsi
    movl $RFLAGS_FIXED, %edx
    call tl_enter_user
back_from_int:
    cmpq $0x80, %gs:PC_VECTOR
    je 1f
    PUTS "quirk user_int: int $0x80 from CPL 3 through a DPL 3 gate raised vector "
    PUTHEX %gs:PC_VECTOR
    PUTS "\n"
    orq $QUIRK_USER_INT, %r15
1:  leaq user_probe(%rip), %rdi          /* 2: syscall from CPL 3 */
    leaq ustack_top(%rip), %rsi
    movl $RFLAGS_FIXED, %edx
    call tl_enter_user
back_from_user:
    leaq seen_segs(%rip), %rbx
    cmpq $USER_CS, 0(%rbx)
    jne 1f
    cmpq $USER_DS, 8(%rbx)
    jne 1f
    cmpq $KERNEL_CS, 16(%rbx)
    jne 1f
    cmpq $KERNEL_DS, 24(%rbx)
    je 2f
1:  PUTS "quirk user_segs: mov read CS "
    PUTHEX 0(%rbx)
    PUTS " SS "
    PUTHEX 8(%rbx)
    PUTS " at CPL 3 and CS "
    PUTHEX 16(%rbx)
    PUTS " SS "
    PUTHEX 24(%rbx)
    PUTS " after syscall\n"
    orq $QUIRK_USER_SEGS, %r15
2:  cmpq $0, syscall_cpl0(%rip)
    jne 1f
    PUTS "quirk syscall: syscall from CPL 3 ran its entry at CPL 3 (mov from CR0 was #GP)\n"
    orq $QUIRK_SYSCALL, %r15
1:

    PUTS "quirks "
    PUTHEX %r15
    PUTS "\n"
    PASS

isr_hook:                               /* rdi = frame, rsi = per-vCPU area */
    movl $(X2APIC_ISR0 + VEC / 32), %ecx
    rdmsr
    movq %rax, seen_isr(%rip)
    movl $X2APIC_PPR, %ecx
    rdmsr
    movq %rax, seen_ppr(%rip)
    jmp tl_eoi_hook

user_int_probe:
    int $0x80
    ud2

user_probe:
    xorl %eax, %eax
    movw %cs, %ax
    movq %rax, seen_segs(%rip)
    movw %ss, %ax
    movq %rax, seen_segs+8(%rip)
    syscall                             /* to syscall_entry, at CPL 0 */
    ud2

syscall_entry:
    xorl %eax, %eax
    movw %cs, %ax
    movq %rax, seen_segs+16(%rip)
    movw %ss, %ax
    movq %rax, seen_segs+24(%rip)
    EXPECT 1f                           /* at CPL 0 mov from CR0 works; at CPL 3 it is #GP */
    movq %cr0, %rax
    movq $0, %gs:PC_RESUME
    movq $1, syscall_cpl0(%rip)
1:  movq kernel_rsp(%rip), %rax
    EXPECT_JMP back_from_user, %rax
    int $0x80                           /* back to back_from_user at CPL 0, from either CPL */
    ud2

    .section .rodata
    .balign 4
canon_msrs:
    .long MSR_LSTAR, MSR_CSTAR, MSR_FS_BASE, MSR_KERNEL_GS_BASE, MSR_GS_BASE, 0x175, 0x176, 0

    .section .data
    .balign 8
seen_isr: .quad 0
seen_ppr: .quad 0
seen_segs: .quad 0, 0, 0, 0             /* CS, SS at CPL 3; CS, SS after syscall */
syscall_cpl0: .quad 0
kernel_rsp: .quad 0

    .section .bss
    .balign 16
ustack: .skip 4096
ustack_top:
