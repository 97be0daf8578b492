/*
 * apf.c -- the guest half of KVM's asynchronous page faults, as Linux 2.6.38 does it
 * (arch/x86/kernel/kvm.c: kvm_guest_cpu_init, kvm_read_and_reset_pf_reason, do_async_page_fault,
 * kvm_async_pf_task_wait, kvm_async_pf_task_wake, apf_task_wake_one, apf_task_wake_all).
 *
 *  - Each vCPU gives the host a 64-byte aligned area (apf_reason_area[cpu]) whose first u32 says
 *    why the next #PF came: 0 an ordinary fault, 1 "page not present" (CR2 = token), 2 "page
 *    ready" (CR2 = token, or 0xffffffff = wake every sleeper of this vCPU).
 *  - Not present: the current task sleeps on the token in apf_sleepers (256 buckets,
 *    hash_32(token, 8)) and the CPU runs another task.  A context that cannot schedule (the idle
 *    task, or kernel code with preemption disabled) halts the CPU with interrupts on instead,
 *    until its node is woken.
 *  - Page ready: the sleeper on that token is unhashed and made runnable (or its halted CPU is
 *    kicked).  If nobody sleeps on it yet, a dummy node is left; the wait that comes later finds
 *    it, frees it and returns at once.
 */
#include "refkernel.h"

struct apf_area apf_reason_area[MAX_CPUS];
struct apf_bucket apf_sleepers[APF_HASH_SIZE];

/* Dummy nodes (Linux kzalloc()s them with GFP_ATOMIC; here a fixed pool and a free list). */
static struct apf_node apf_dummy_pool[APF_DUMMY_POOL];
static struct apf_node *apf_dummy_free;
static spinlock_t apf_dummy_lock;
static volatile int apf_pool_warned;

void apf_init(void)
{
    apf_dummy_free = NULL;
    for (int i = APF_DUMMY_POOL - 1; i >= 0; i--) {
        apf_dummy_pool[i].next = apf_dummy_free;
        apf_dummy_free = &apf_dummy_pool[i];
    }
}

static struct apf_node *dummy_alloc(void)
{
    spin_lock(&apf_dummy_lock);
    struct apf_node *n = apf_dummy_free;
    if (n)
        apf_dummy_free = n->next;
    spin_unlock(&apf_dummy_lock);
    return n;
}

static void dummy_free(struct apf_node *n)
{
    spin_lock(&apf_dummy_lock);
    n->next = apf_dummy_free;
    n->pprev = NULL;
    apf_dummy_free = n;
    spin_unlock(&apf_dummy_lock);
}

/* ---- detection and enabling (kvm_para_available, kvm_guest_cpu_init) ---------------------- */
static NOINLINE int kvm_para_available(void)
{
    u32 a, b, c, d;
    cpuid(KVM_CPUID_SIGNATURE, &a, &b, &c, &d);
    /* "KVMKVMKVM\0\0\0" in EBX, ECX, EDX */
    return b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d;
}

u64 kvm_features(void)
{
    u32 a, b, c, d;
    if (!kvm_para_available())
        return 0;
    cpuid(KVM_CPUID_FEATURES, &a, &b, &c, &d);
    return a;
}

/* Per vCPU, interrupts off.  Ask for SEND_ALWAYS first (this kernel can take an async PF in
 * kernel mode, as a CONFIG_PREEMPT 2.6.38 kernel can); a host that does not know the bit (the
 * seed series reserves bits 5:1) refuses the write with #GP, which wrmsr_safe turns into -1:
 * then enable for user mode only. */
void apf_cpu_init(struct cpu *c)
{
    struct refkernel_config *cfg = &refkernel_config;
    c->apf_enabled = 0;
    if (cfg->flags & RKF_NO_APF)
        return;
    if (!(cfg->kvm_features & (1u << KVM_FEATURE_ASYNC_PF)))
        return;
    struct apf_area *area = &apf_reason_area[c->index];
    area->reason = 0;
    u64 pa = (u64)area;     /* guest paging is off: virtual = physical */
    if (!(cfg->flags & RKF_NO_SEND_ALWAYS)) {
        u64 v = pa | KVM_ASYNC_PF_SEND_ALWAYS | KVM_ASYNC_PF_ENABLED;
        if (wrmsr_safe(MSR_KVM_ASYNC_PF_EN, v) == 0) {
            c->apf_enabled = 1;
            c->apf_send_always = 1;
            c->apf_msr = v;
        } else {
            kprintf("refkernel: cpu %d: async PF enable with SEND_ALWAYS refused (#GP, MSR %x <- "
                    "%lx); enabling for user mode only\n",
                    (int)c->index, MSR_KVM_ASYNC_PF_EN, v);
        }
    }
    if (!c->apf_enabled) {
        u64 v = pa | KVM_ASYNC_PF_ENABLED;
        if (wrmsr_safe(MSR_KVM_ASYNC_PF_EN, v) == 0) {
            c->apf_enabled = 1;
            c->apf_msr = v;
        } else {
            kprintf("refkernel: cpu %d: async PF enable refused (#GP, MSR %x <- %lx): running "
                    "without async PF\n",
                    (int)c->index, MSR_KVM_ASYNC_PF_EN, v);
            return;
        }
    }
    kprintf("refkernel: cpu %d: async PF enabled, area %lx%s\n", (int)c->index, pa,
            c->apf_send_always ? ", SEND_ALWAYS" : "");
}

/* kvm_read_and_reset_pf_reason: called first thing in the #PF handler, interrupts off, so no
 * other async PF can overwrite it; cleared before anything could take an ordinary #PF. */
u32 apf_read_and_reset_reason(void)
{
    struct cpu *c = this_cpu();
    u32 reason = 0;
    if (c->apf_enabled) {
        struct apf_area *area = &apf_reason_area[c->index];
        reason = area->reason;
        area->reason = 0;
    }
    return reason;
}

/* ---- the sleeper hash ---------------------------------------------------------------------- */
static NOINLINE struct apf_node *find_node(struct apf_bucket *b, u32 token)
{
    for (struct apf_node *n = b->first; n; n = n->next)
        if (n->token == token)
            return n;
    return NULL;
}

static void hash_add(struct apf_bucket *b, struct apf_node *n)
{
    n->next = b->first;
    if (b->first)
        b->first->pprev = &n->next;
    b->first = n;
    n->pprev = &b->first;
}

static void hash_del(struct apf_node *n)
{
    *n->pprev = n->next;
    if (n->next)
        n->next->pprev = n->pprev;
    n->next = NULL;
    __atomic_store_n(&n->pprev, NULL, __ATOMIC_RELEASE);   /* "unhashed": the waiter may go */
}

static int node_unhashed(struct apf_node *n)
{
    return __atomic_load_n(&n->pprev, __ATOMIC_ACQUIRE) == NULL;
}

/* kvm_async_pf_task_wait: interrupts off (the #PF gate), called with the token from CR2. */
void apf_task_wait(u32 token, struct trapframe *tf)
{
    struct cpu *c = this_cpu();
    struct task *t = current_task[c->index];
    struct apf_bucket *b = &apf_sleepers[hash_32(token, APF_HASH_BITS)];
    struct apf_node n, *e;

    spin_lock(&b->lock);
    e = find_node(b, token);
    if (e) {
        /* the wake came first and left a dummy: consume it, the page is already there */
        hash_del(e);
        spin_unlock(&b->lock);
        dummy_free(e);
        c->apf_dummies_used++;
        if (refkernel_config.flags & RKF_VERBOSE)
            kprintf("apf: cpu %d token %x: wake came first, dummy consumed\n", (int)c->index, token);
        return;
    }
    n.token = token;
    n.cpu = (s32)c->index;
    n.dummy = 0;
    n.task = t;
    /* Linux: idle, or preempt_count() > 1, tested while its bucket lock (one level) is held.
     * refkernel's spinlocks do not count, so > 0. */
    n.halted = t == &c->idle || c->preempt_count > 0;
    hash_add(b, &n);
    spin_unlock(&b->lock);

    if (n.halted) {
        c->apf_halts++;
        if (refkernel_config.flags & RKF_VERBOSE)
            kprintf("apf: cpu %d token %x: %s cannot schedule (rip %lx), halting\n", (int)c->index,
                    token, t->name, tf->rip);
        while (!node_unhashed(&n)) {
            c->apf_halt_loops++;
            safe_halt();        /* page ready (#PF), a kick (IPI) or the timer ends it */
            cli();
        }
        return;
    }

    c->apf_sleeps++;
    t->apf_waits++;
    if ((tf->cs & 3) == 0)
        t->apf_kernel_waits++;
    if (refkernel_config.flags & RKF_VERBOSE)
        kprintf("apf: cpu %d token %x: %s sleeps (%s rip %lx)\n", (int)c->index, token, t->name,
                (tf->cs & 3) ? "user" : "kernel", tf->rip);
    for (;;) {
        /* The check and the state change under the run-queue lock, which the waker also takes
         * (after it unhashed the node): it cannot slip in between. */
        spin_lock(&c->rq_lock);
        if (node_unhashed(&n)) {
            t->state = TASK_RUNNING;
            t->sleep_token = 0;
            spin_unlock(&c->rq_lock);
            break;
        }
        t->state = TASK_SLEEPING;
        t->sleep_token = token;
        spin_unlock(&c->rq_lock);
        schedule();
    }
    __atomic_add_fetch(&t->user->apf_wakes, 1, __ATOMIC_SEQ_CST);   /* the task checks its data */
}

/* apf_task_wake_one: the bucket lock is held.  Read the node before unhashing it: once unhashed
 * it may vanish from the waiter's stack. */
static NOINLINE void apf_task_wake_one(struct apf_node *n)
{
    struct cpu *c = this_cpu();
    int halted = n->halted, dummy = n->dummy, cpu = n->cpu;
    struct task *t = n->task;
    hash_del(n);
    if (dummy) {
        dummy_free(n);      /* Linux 2.6.38 leaks it here; later kernels free it */
        return;
    }
    c->apf_woken++;
    if (halted) {
        if (cpu != (int)c->index)
            send_ipi((u32)cpu, VEC_RESCHED);   /* its hlt ends; it sees the node unhashed */
        /* same CPU: this #PF interrupted its hlt, and it looks again when we return */
    } else {
        wake_up_task(t);
    }
}

/* apf_task_wake_all: every sleeper (and dummy) of this CPU. */
static NOINLINE void apf_task_wake_all(void)
{
    struct cpu *c = this_cpu();
    for (int i = 0; i < APF_HASH_SIZE; i++) {
        struct apf_bucket *b = &apf_sleepers[i];
        spin_lock(&b->lock);
        struct apf_node *n = b->first;
        while (n) {
            struct apf_node *next = n->next;
            if (n->cpu == (s32)c->index)
                apf_task_wake_one(n);
            n = next;
        }
        spin_unlock(&b->lock);
    }
}

/* kvm_async_pf_task_wake */
void apf_task_wake(u32 token)
{
    struct cpu *c = this_cpu();
    if (token == APF_WAKE_ALL_TOKEN) {
        apf_task_wake_all();
        return;
    }
    struct apf_bucket *b = &apf_sleepers[hash_32(token, APF_HASH_BITS)];
    spin_lock(&b->lock);
    struct apf_node *n = find_node(b, token);
    if (n) {
        apf_task_wake_one(n);
        spin_unlock(&b->lock);
        return;
    }
    /* the page is ready before anyone waited for it: leave a dummy for the wait */
    n = dummy_alloc();
    if (!n) {
        /* Linux retries the allocation for ever; with a fixed pool that would never end */
        spin_unlock(&b->lock);
        c->apf_dummies_dropped++;
        c->errors++;
        if (!__atomic_exchange_n(&apf_pool_warned, 1, __ATOMIC_SEQ_CST))
            kprintf("refkernel: cpu %d: dummy pool empty, wake for token %x dropped\n",
                    (int)c->index, token);
        return;
    }
    n->token = token;
    n->cpu = (s32)c->index;
    n->halted = 0;
    n->dummy = 1;
    n->task = NULL;
    hash_add(b, n);
    spin_unlock(&b->lock);
    c->apf_dummies++;
    if (refkernel_config.flags & RKF_VERBOSE)
        kprintf("apf: cpu %d token %x: ready before its wait, dummy left\n", (int)c->index, token);
}

/* The #PF handler (do_async_page_fault).  Interrupt gate: IF = 0 until a wait turns it on. */
void pf_handler(struct trapframe *tf)
{
    struct cpu *c = this_cpu();
    u32 reason = apf_read_and_reset_reason();
    u64 cr2 = read_cr2();

    switch (reason) {
    case KVM_PV_REASON_PAGE_NOT_PRESENT:
        c->apf_not_present++;
        apf_task_wait((u32)cr2, tf);
        break;
    case KVM_PV_REASON_PAGE_READY:
        if ((u32)cr2 == APF_WAKE_ALL_TOKEN)
            c->apf_wake_all++;
        else
            c->apf_ready++;
        if (refkernel_config.flags & RKF_VERBOSE)
            kprintf("apf: cpu %d token %x: page ready\n", (int)c->index, (u32)cr2);
        apf_task_wake((u32)cr2);
        break;
    default: {
        /* an ordinary page fault: without guest paging there should be none */
        struct task *t = current_task[c->index];
        kprintf("refkernel: PF at RIP %lx, CR2 %lx, error %lx (task %s, cpu %d, reason %u)\n",
                tf->rip, cr2, tf->error, t->name, (int)c->index, reason);
        if ((tf->cs & 3) == 3)
            task_exit(-1);      /* counted as a failed task in the summary */
        panic("page fault in the kernel");
    }
    }
}

/* Nodes still hashed (at the end of a run: none that a task waits on, only dummies may be left). */
u64 apf_nodes_left(u64 *dummies)
{
    u64 waiters = 0, d = 0;
    for (int i = 0; i < APF_HASH_SIZE; i++) {
        struct apf_bucket *b = &apf_sleepers[i];
        spin_lock(&b->lock);
        for (struct apf_node *n = b->first; n; n = n->next) {
            if (n->dummy)
                d++;
            else
                waiters++;
        }
        spin_unlock(&b->lock);
    }
    *dummies = d;
    return waiters;
}
