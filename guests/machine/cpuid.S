/*
 * cpuid: the leaves KVM defines, on every vCPU (run it with 2 or more).
 *
 *  - leaf 0x40000000: EAX >= 0x40000001 and "KVMKVMKVM\0\0\0" in EBX, ECX, EDX;
 *  - leaf 0x40000001 exists (any EAX), leaves are read with RAX/RBX/RCX/RDX bits 63:32 cleared;
 *  - leaf 1: ECX bit 31 (hypervisor present) and EBX[31:24] = the vCPU's APIC id = its index,
 *    which is also what the x2APIC ID register (MSR 0x802) says.
 * Every vCPU checks its own answers and counts itself in; vCPU 0 passes once all have.
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movq %rdi, %r12                     /* index */
    movq %rsi, %r13                     /* count */

    movq $-1, %rbx                      /* cpuid must write all of RAX..RDX, zero-extended */
    movq $-1, %rdx
    movabsq $0xffffffff00000000, %rcx   /* ECX = 0 with garbage above */
    movabsq $0xffffffff40000000, %rax   /* only EAX selects the leaf */
    cpuid
    movabsq $0x40000001, %r8
    ASSERT ae, %rax, %r8, 0x10
    movabsq $0x40000100, %r8
    ASSERT b, %rax, %r8, 0x11           /* still a hypervisor leaf, zero-extended */
    ASSERT_EQ64 %rbx, 0x4b4d564b, 0x12  /* "KVMK" */
    ASSERT_EQ64 %rcx, 0x564b4d56, 0x13  /* "VMKV" */
    ASSERT_EQ64 %rdx, 0x0000004d, 0x14  /* "M\0\0\0" */

    movq $-1, %rax
    movq $-1, %rdx
    movl $0x40000001, %eax
    xorl %ecx, %ecx
    cpuid
    movq %rax, %r8
    shrq $32, %r8
    ASSERT_EQ %r8, $0, 0x18
    movq %rdx, %r8
    shrq $32, %r8
    ASSERT_EQ %r8, $0, 0x19

    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    btl $31, %ecx
    jc 1f
    FAIL 0x20                           /* hypervisor bit clear */
1:  shrl $24, %ebx
    ASSERT_EQ %rbx, %r12, 0x21          /* initial APIC id = vCPU index */

    MSR_READ X2APIC_ID
    ASSERT_EQ %rax, %r12, 0x22          /* x2APIC id = vCPU index */

    PUTS "cpuid ok on vCPU "
    PUTDEC %r12
    PUTS "\n"
    lock incl done(%rip)
    testq %r12, %r12
    jnz 3f
2:  pause
    movl done(%rip), %eax
    cmpq %r13, %rax
    jb 2b
    PASS
3:  cli
    hlt
    jmp 3b

    .section .data
done:
    .long 0
