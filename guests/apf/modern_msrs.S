/*
 * modern_msrs: the async-PF MSRs of today's protocol (Linux 5.8 and later), everything that needs
 * no page-out: what a host offering KVM_FEATURE_ASYNC_PF_INT does (docs/kvm-model.md, "Today's
 * protocol"). Run under real KVM by tests/kvm/test_modern_protocol_on_kvm.py (kvmrun.py --pv).
 *
 *  - CPUID 0x40000001 EAX offers ASYNC_PF (bit 4) and ASYNC_PF_INT (bit 14);
 *  - MSR_KVM_ASYNC_PF_INT (0x4b564d06): reads 0 at reset; any bit above 7 -> #GP(0), nothing
 *    stored; the vector reads back;
 *  - MSR_KVM_ASYNC_PF_ACK (0x4b564d07): reads 0; writes of 0 and 1 are taken;
 *  - MSR_KVM_ASYNC_PF_EN: bits 4 and 5 -> #GP(0), nothing stored; ENABLED without
 *    DELIVERY_AS_INT is stored but is not "enabled": no wake-all comes;
 *  - ENABLED | DELIVERY_AS_INT: a wake-all page-ready comes: its interrupt on the vector once
 *    IF = 1 (not before), token ~0 at offset 4, flags at offset 0 untouched; the handler clears
 *    the token and writes ACK;
 *  - the token slot: while the token word is not 0, no page-ready is written nor sent; after the
 *    guest clears it, its ACK write delivers the waiting one (the token is there right after the
 *    wrmsr: the ACK runs the completion check itself);
 *  - while the APIC is software-disabled no page-ready is written nor sent; enabling it delivers
 *    the waiting one;
 *  - an area outside guest RAM -> #GP(0), and the value is stored anyway;
 *  - SEND_ALWAYS (bit 1) and DELIVERY_AS_PF_VMEXIT (bit 2, offered: bit 10) are taken.
 */
    .include "testlib.inc"

    .set MSR_EN, 0x4b564d02
    .set MSR_INT, 0x4b564d06
    .set MSR_ACK, 0x4b564d07
    .set VEC, 0xec
    .set EN_ON, 1
    .set EN_SEND_ALWAYS, 2
    .set EN_VMEXIT, 4
    .set EN_INT, 8
    .set SPIN, 20000

/* a wrmsr that must raise #GP(0) (RAX, RCX, RDX, R11 clobbered) */
.macro WRMSR_GP msr, value, base
    EXPECT 1f
    MSR_WRITE \msr, \value
1:  cmpq $EXC_GP, %gs:PC_VECTOR
    je 2f
    FAIL \base
2:  cmpq $0, %gs:PC_ERROR
    je 3f
    FAIL (\base + 1)
3:
.endm

/* an EN write of area | bits that must be taken */
.macro EN_WRITE bits
    leaq area(%rip), %rax
    orq $\bits, %rax
    MSR_WRITE_REG MSR_EN, %rax
.endm

/* an EN write of area | bits that must raise #GP (failure `code`) */
.macro EN_WRITE_GP bits, code
    leaq area(%rip), %r12
    orq $\bits, %r12
    EXPECT 1f
    MSR_WRITE_REG MSR_EN, %r12
1:  ASSERT_EQ %gs:PC_VECTOR, $EXC_GP, \code
.endm

/* IF = 1 for a while, then IF = 0 again */
.macro OPEN_WINDOW
    sti
    movl $SPIN, %ecx
1:  decl %ecx
    jnz 1b
    cli
.endm

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    call tl_init
    movl $VEC, %edi
    leaq ready_hook(%rip), %rsi
    call tl_set_hook
    MSR_WRITE X2APIC_SVR, 0x1ff         /* the APIC on: page-ready waits while it is off */

    /* --- CPUID --------------------------------------------------------------------- */
    movl $0x40000001, %eax
    xorl %ecx, %ecx
    cpuid
    movl %eax, %ebx
    andl $(1 << 4), %eax
    ASSERT_EQ %rax, $(1 << 4), 0x10
    andl $(1 << 14), %ebx
    ASSERT_EQ %rbx, $(1 << 14), 0x11

    /* --- MSR_KVM_ASYNC_PF_INT ------------------------------------------------------ */
    MSR_READ MSR_INT
    ASSERT_EQ %rax, $0, 0x20
    WRMSR_GP MSR_INT, 0x1ec, 0x21
    WRMSR_GP MSR_INT, 0x100000000ec, 0x23
    MSR_READ MSR_INT
    ASSERT_EQ %rax, $0, 0x25
    MSR_WRITE MSR_INT, VEC
    MSR_READ MSR_INT
    ASSERT_EQ %rax, $VEC, 0x26

    /* --- MSR_KVM_ASYNC_PF_ACK ------------------------------------------------------ */
    MSR_READ MSR_ACK
    ASSERT_EQ %rax, $0, 0x28
    MSR_WRITE MSR_ACK, 0
    MSR_WRITE MSR_ACK, 1

    /* --- MSR_KVM_ASYNC_PF_EN: reserved bits, ENABLED alone ------------------------ */
    EN_WRITE_GP (EN_ON | EN_INT | 0x10), 0x30
    EN_WRITE_GP (EN_ON | EN_INT | 0x20), 0x31
    MSR_READ MSR_EN
    ASSERT_EQ %rax, $0, 0x32            /* nothing stored */

    EN_WRITE EN_ON
    MSR_READ MSR_EN
    leaq area(%rip), %rbx
    orq $EN_ON, %rbx
    ASSERT_EQ %rax, %rbx, 0x33
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $0, 0x34   /* not "enabled": no wake-all */
    movl area+4(%rip), %eax
    ASSERT_EQ %rax, $0, 0x35

    /* --- ENABLED | DELIVERY_AS_INT: the wake-all -------------------------------------- */
    movl $0x5a5a, area(%rip)            /* flags: the host leaves it alone on page-ready */
    EN_WRITE (EN_ON | EN_INT)
    /* (when the token is written is the host's choice: the kernel's next entry; the PVM host of
     * Linux 6.18 here writes it at a later one. So it is checked in the handler.) */
    movl area(%rip), %eax
    ASSERT_EQ %rax, $0x5a5a, 0x37
    ASSERT_EQ readies(%rip), $0, 0x38   /* the interrupt waits for IF */
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $1, 0x39
    movl seen_token(%rip), %eax
    ASSERT_EQ64 %rax, 0xffffffff, 0x3a
    movl $0, area(%rip)

    /* --- the token slot -------------------------------------------------------------- */
    MSR_WRITE MSR_EN, 0                 /* off (the done list is empty again) */
    movl $0x1234, area+4(%rip)          /* the slot is taken */
    EN_WRITE (EN_ON | EN_INT)           /* a new wake-all: it must wait for the slot */
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $1, 0x40
    movl area+4(%rip), %eax
    ASSERT_EQ %rax, $0x1234, 0x41
    movl $0, area+4(%rip)               /* the guest frees the slot, then ACKs: */
    MSR_WRITE MSR_ACK, 1
    movl area+4(%rip), %eax
    ASSERT_EQ64 %rax, 0xffffffff, 0x42
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $2, 0x43

    /* --- the APIC software-disabled ----------------------------------------------------- */
    MSR_WRITE MSR_EN, 0
    MSR_WRITE X2APIC_SVR, 0xff          /* APIC off: page-ready waits */
    EN_WRITE (EN_ON | EN_INT)
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $2, 0x44
    movl area+4(%rip), %eax
    ASSERT_EQ %rax, $0, 0x45            /* not even written */
    MSR_WRITE X2APIC_SVR, 0x1ff         /* APIC on again: that re-checks (lapic.c apic_set_spiv) */
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $3, 0x46

    /* --- an area outside guest RAM ---------------------------------------------------- */
    MSR_WRITE MSR_EN, 0
    movabsq $(0x40000000 | EN_ON | EN_INT), %r12
    EXPECT 1f
    MSR_WRITE_REG MSR_EN, %r12
1:  ASSERT_EQ %gs:PC_VECTOR, $EXC_GP, 0x48
    MSR_READ MSR_EN
    ASSERT_EQ %rax, %r12, 0x49          /* stored before the check */
    MSR_WRITE MSR_EN, 0

    /* --- SEND_ALWAYS and DELIVERY_AS_PF_VMEXIT --------------------------------------- */
    EN_WRITE (EN_ON | EN_INT | EN_SEND_ALWAYS | EN_VMEXIT)
    OPEN_WINDOW
    ASSERT_EQ readies(%rip), $4, 0x50
    MSR_WRITE MSR_EN, 0
    MSR_READ MSR_EN
    ASSERT_EQ %rax, $0, 0x51
    PASS
    .size _start, . - _start

/* The page-ready interrupt: count it, take the token, free the slot, ACK, EOI. */
    .type ready_hook, @function
ready_hook:
    incq readies(%rip)
    movl area+4(%rip), %eax
    movl %eax, seen_token(%rip)
    movl $0, area+4(%rip)
    MSR_WRITE MSR_ACK, 1
    jmp tl_eoi_hook
    .size ready_hook, . - ready_hook

    .data
    .balign 64
area:       .fill 64, 1, 0            /* struct kvm_vcpu_pv_apf_data: u32 flags, u32 token, pad */
readies:    .quad 0
seen_token: .quad 0
