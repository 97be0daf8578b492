/*
 * trap.c -- the IDT, what each vector does, and the system calls.
 *
 * Every gate is a 64-bit interrupt gate (IF cleared on entry), so all handlers start with
 * interrupts off; the async PF reason is read before anything turns them on.
 */
#include "refkernel.h"

struct idt_gate {
    u16 off_lo, sel;
    u8 ist, attr;
    u16 off_mid;
    u32 off_hi, zero;
};
static struct idt_gate idt[256] ALIGNED(16);
static struct {
    u16 limit;
    u64 base;
} __attribute__((packed)) idtr;

static const char *const exc_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#09", "#TS", "#NP", "#SS",
    "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        u64 h = (u64)idt_stubs + 16 * (u64)v;
        idt[v].off_lo = (u16)h;
        idt[v].sel = KERNEL_CS;
        idt[v].ist = v == VEC_DF ? 1 : 0;   /* #DF on its own stack (TSS.IST1) */
        idt[v].attr = 0x8e;                 /* present, DPL 0, interrupt gate */
        idt[v].off_mid = (u16)(h >> 16);
        idt[v].off_hi = (u32)(h >> 32);
        idt[v].zero = 0;
    }
    idtr.limit = sizeof idt - 1;
    idtr.base = (u64)idt;
}

void idt_load(void) { __asm__ volatile("lidt %0" : : "m"(idtr)); }

void apic_eoi(void) { wrmsr(X2APIC_EOI, 0); }

void send_ipi(u32 cpu, u32 vector)
{
    mb();   /* what the target will look at is visible before the interrupt is */
    wrmsr(X2APIC_ICR, ((u64)cpu << 32) | vector);   /* fixed, physical destination */
}

static void dump_frame(struct trapframe *tf)
{
    kprintf("  rip %lx cs %lx rflags %lx rsp %lx ss %lx error %lx\n", tf->rip, tf->cs, tf->rflags,
            tf->rsp, tf->ss, tf->error);
    kprintf("  rax %lx rbx %lx rcx %lx rdx %lx rsi %lx rdi %lx\n", tf->rax, tf->rbx, tf->rcx, tf->rdx,
            tf->rsi, tf->rdi);
}

/* An exception nothing expects: a task at CPL 3 is killed (its error counted), the kernel panics. */
static NOINLINE void unexpected(struct trapframe *tf, const char *what)
{
    struct cpu *c = this_cpu();
    struct task *t = current();
    if ((tf->cs & 3) == 3) {
        kprintf("refkernel: %s in task %s (cpu %d) at rip %lx: task killed\n", what, t->name,
                (int)c->index, tf->rip);
        dump_frame(tf);
        task_exit(-1);      /* counted as a failed task in the summary */
    }
    panic("%s in the kernel at rip %lx (task %s)", what, tf->rip, t->name);
}

/* #GP: an instruction listed in the exception table (wrmsr_safe) resumes at its fixup. */
static NOINLINE void gp_handler(struct trapframe *tf)
{
    if ((tf->cs & 3) == 0) {
        for (const u64 *e = __extable_start; e < __extable_end; e += 2) {
            if (e[0] == tf->rip) {
                this_cpu()->gp_fixups++;
                tf->rip = e[1];
                return;
            }
        }
    }
    char what[48];
    snfmt(what, sizeof what, "#GP(%lx)", tf->error);
    unexpected(tf, what);
}

static NOINLINE void timer_interrupt(void)
{
    struct cpu *c = this_cpu();
    apic_eoi();
    c->ticks++;
    if (current() != &c->idle) {
        c->need_resched = 1;    /* round robin: the running task goes to the tail at the next
                                   return to CPL 3 */
    }
}

void trap_dispatch(struct trapframe *tf)
{
    struct cpu *c = this_cpu();
    u64 v = tf->vector;
    if (v == VEC_PF) {
        pf_handler(tf);
    } else if (v == VEC_TIMER) {
        timer_interrupt();
    } else if (v == VEC_RESCHED) {
        apic_eoi();
        c->resched_ipis++;
        c->need_resched = 1;
    } else if (v == VEC_SPURIOUS) {
        /* no EOI for the spurious vector */
    } else if (v == VEC_GP) {
        gp_handler(tf);
    } else if (v < 32) {
        char what[48];
        snfmt(what, sizeof what, "exception %s", exc_names[v] ? exc_names[v] : "?");
        if (v == VEC_DF)
            panic("double fault (rip %lx)", tf->rip);
        unexpected(tf, what);
    } else {
        kprintf("refkernel: cpu %d: unexpected interrupt %lx\n", (int)c->index, v);
        c->errors++;
        apic_eoi();
    }
    /* The way back to CPL 3 is where a task gives up the CPU (timer, wake-up IPI). */
    if ((tf->cs & 3) == 3) {
        while (c->need_resched) {
            current()->preemptions++;
            schedule();
        }
    }
}

/* ---- system calls -------------------------------------------------------------------------- */
static NOINLINE u64 sys_write(const char *ubuf, u64 len)
{
    char buf[200];
    if (len > sizeof buf - 1)
        len = sizeof buf - 1;
    memcpy(buf, ubuf, len);     /* interrupts on: may take an async PF in kernel mode */
    buf[len] = 0;
    kputs(buf);
    return len;
}

/* Adds up user memory in kernel mode, interrupts on.  atomic != 0: with preemption disabled,
 * which is the context where an async PF cannot schedule and the CPU halts instead. */
static NOINLINE u64 sys_sum(const volatile u64 *p, u64 n, u64 atomic)
{
    struct cpu *c = this_cpu();
    u64 s = 0;
    if (n > MAX_PAGES_PER_TASK * PAGE_SIZE / 8)
        n = MAX_PAGES_PER_TASK * PAGE_SIZE / 8;
    if (atomic)
        c->preempt_count++;
    for (u64 i = 0; i < n; i++)
        s += p[i];
    if (atomic)
        c->preempt_count--;
    return s;
}

static NOINLINE void sys_corrupt(struct task *t, u64 page, u64 word, u64 expected, u64 found, u64 iter)
{
    u64 f = irq_save();
    t->corrupt++;
    __atomic_add_fetch(&corrupt_total, 1, __ATOMIC_SEQ_CST);
    irq_restore(f);
    if (word == ~0ul)
        kprintf("CORRUPT task %d page %lu iteration %lu: kernel sum %lx, expected %lx\n", t->id,
                page, iter, found, expected);
    else
        kprintf("CORRUPT task %d page %lu word %lu iteration %lu: expected %lx found %lx\n", t->id,
                page, word, iter, expected, found);
}

void syscall_dispatch(struct trapframe *tf)
{
    struct cpu *c = this_cpu();
    struct task *t = current();
    t->syscalls++;
    sti();
    u64 ret = 0;
    switch (tf->rax) {
    case SYS_YIELD:
        cli();
        schedule();
        sti();
        break;
    case SYS_WRITE:
        ret = sys_write((const char *)tf->rdi, tf->rsi);
        break;
    case SYS_EXIT:
        cli();
        task_exit((int)tf->rdi);
    case SYS_SUM:
        ret = sys_sum((const volatile u64 *)tf->rdi, tf->rsi, tf->rdx);
        break;
    case SYS_CORRUPT:
        sys_corrupt(t, tf->rdi, tf->rsi, tf->rdx, tf->r10, tf->r8);
        break;
    case SYS_GETCPU:
        ret = c->index;
        break;
    default:
        ret = (u64)-1;
    }
    tf->rax = ret;
    cli();
    while (c->need_resched) {
        t->preemptions++;
        schedule();
    }
}
