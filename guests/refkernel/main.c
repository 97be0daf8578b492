/*
 * main.c -- boot on every vCPU, the configuration, and the end of the run.
 *
 * vCPU 0 does the global set-up (configuration, IDT, tasks) while the others wait for it; then
 * every vCPU sets up its own GS, IDT, TSS IST, syscall MSRs, x2APIC timer and async PF, queues
 * its tasks and becomes its idle task.  When every task of every vCPU has exited, vCPU 0 prints
 * the summary and ends the run through port 0xf4.
 */
#include "refkernel.h"

struct cpu cpus[MAX_CPUS];
struct refkernel_config refkernel_config;
volatile u64 tasks_exited;
volatile u64 errors_global;
volatile u64 corrupt_total;
static volatile u32 boot_done;
static volatile u32 cpus_online;

u8 idle_stacks[MAX_CPUS][KSTACK_SIZE] ALIGNED(4096);
static u8 df_stacks[MAX_CPUS][DFSTACK_SIZE] ALIGNED(4096);

u64 kvm_features(void);

static NOINLINE void config_init(u64 ncpus)
{
    struct refkernel_config *cfg = &refkernel_config;
    const volatile struct refkernel_params *p = (const volatile struct refkernel_params *)PARAMS_ADDR;
    int have = p->magic == PARAMS_MAGIC;

    cfg->ncpus = ncpus;
    cfg->iterations = have && p->iterations ? p->iterations : DEFAULT_ITERATIONS;
    cfg->tasks_per_cpu = have && p->tasks_per_cpu ? p->tasks_per_cpu : DEFAULT_TASKS_PER_CPU;
    cfg->pages_per_task = have && p->pages_per_task ? p->pages_per_task : DEFAULT_PAGES_PER_TASK;
    cfg->flags = have ? p->flags : DEFAULT_FLAGS;
    cfg->timer_period = have && p->timer_period ? p->timer_period : DEFAULT_TIMER_PERIOD * ncpus;
    cfg->data_base = have && p->data_base ? p->data_base : DEFAULT_DATA_BASE;
    if (cfg->tasks_per_cpu > MAX_TASKS_PER_CPU)
        cfg->tasks_per_cpu = MAX_TASKS_PER_CPU;
    if (cfg->pages_per_task > MAX_PAGES_PER_TASK)
        cfg->pages_per_task = MAX_PAGES_PER_TASK;
    cfg->data_base &= ~(u64)(PAGE_SIZE - 1);
    cfg->ntasks = ncpus * cfg->tasks_per_cpu;
    cfg->kvm_features = kvm_features();
    kprintf("refkernel: %lu cpus, %lu tasks/cpu, %lu pages/task, %lu iterations, data %lx-%lx, "
            "timer %lu, flags %lx%s\n",
            ncpus, cfg->tasks_per_cpu, cfg->pages_per_task, cfg->iterations, cfg->data_base,
            cfg->data_base + cfg->ntasks * cfg->pages_per_task * PAGE_SIZE, cfg->timer_period,
            cfg->flags, have ? " (boot parameters)" : "");
    kprintf("refkernel: KVM features %lx%s\n", cfg->kvm_features,
            (cfg->kvm_features >> KVM_FEATURE_ASYNC_PF) & 1 ? " (async PF)" : "");
}

static NOINLINE void cpu_init(struct cpu *c)
{
    /* #DF on its own stack: IST1 of this vCPU's boot TSS (offset 36, unaligned) */
    u64 df_top = (u64)&df_stacks[c->index][DFSTACK_SIZE];
    memcpy((void *)(TSS_BASE + TSS_STRIDE * c->index + 36), &df_top, 8);
    idt_load();

    /* syscall/sysret */
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
    wrmsr(MSR_STAR, (0x10ul << 48) | (0x08ul << 32));
    wrmsr(MSR_LSTAR, (u64)syscall_entry);
    wrmsr(MSR_FMASK, RFLAGS_IF | RFLAGS_DF | RFLAGS_TF | RFLAGS_AC);

    sched_cpu_init(c);
    apf_cpu_init(c);

    /* this vCPU's tasks */
    struct refkernel_config *cfg = &refkernel_config;
    for (u64 i = 0; i < cfg->tasks_per_cpu; i++)
        enqueue_task(&tasks[c->index * cfg->tasks_per_cpu + i]);

    /* x2APIC: software enable, periodic timer (divide by 1) */
    wrmsr(X2APIC_SVR, APIC_SVR_ENABLE | VEC_SPURIOUS);
    if (!(cfg->flags & RKF_NO_TIMER)) {
        wrmsr(X2APIC_TDCR, 0xb);
        wrmsr(X2APIC_LVT_TIMER, APIC_TIMER_PERIODIC | VEC_TIMER);
        wrmsr(X2APIC_TMICT, cfg->timer_period);
    }
}

NORETURN void kmain(u64 cpu, u64 ncpus)
{
    struct cpu *c = &cpus[cpu];
    c->self = c;
    c->index = cpu;
    c->kstack_top = (u64)&idle_stacks[cpu][KSTACK_SIZE];
    wrmsr(MSR_GS_BASE, (u64)c);
    wrmsr(MSR_KERNEL_GS_BASE, 0);

    if (ncpus > MAX_CPUS)
        ncpus = MAX_CPUS;
    if (cpu == 0) {
        kprintf("refkernel: booting\n");
        config_init(ncpus);
        idt_init();
        apf_init();
        for (u64 i = 0; i < refkernel_config.ntasks; i++)
            task_setup(&tasks[i], (int)i, (int)(i / refkernel_config.tasks_per_cpu));
        __atomic_store_n(&boot_done, 1, __ATOMIC_RELEASE);
    } else {
        while (!__atomic_load_n(&boot_done, __ATOMIC_ACQUIRE))
            cpu_relax();
    }
    cpu_init(c);
    c->online = 1;
    __atomic_add_fetch(&cpus_online, 1, __ATOMIC_SEQ_CST);
    idle_loop();
}

/* vCPU 0, interrupts off, every task exited: the summary, then the exit port. */
NORETURN void finish(void)
{
    struct refkernel_config *cfg = &refkernel_config;
    u64 np = 0, rd = 0, wa = 0, sl = 0, ha = 0, du = 0, dc = 0, dd = 0, errs = 0, cs = 0, ticks = 0;
    for (u64 i = 0; i < cfg->ncpus; i++) {
        struct cpu *c = &cpus[i];
        kprintf("refkernel: cpu %lu: %lu switches, %lu ticks, %lu idle hlt, apf %lu not-present "
                "%lu ready %lu wake-all, %lu sleeps %lu halts, %lu dummies (%lu used)\n",
                i, c->context_switches, c->ticks, c->idle_halts, c->apf_not_present, c->apf_ready,
                c->apf_wake_all, c->apf_sleeps, c->apf_halts, c->apf_dummies, c->apf_dummies_used);
        np += c->apf_not_present;
        rd += c->apf_ready;
        wa += c->apf_wake_all;
        sl += c->apf_sleeps;
        ha += c->apf_halts;
        dc += c->apf_dummies;
        du += c->apf_dummies_used;
        dd += c->apf_dummies_dropped;
        errs += c->errors;
        cs += c->context_switches;
        ticks += c->ticks;
    }
    u64 iters = 0, failed = 0, kwaits = 0, wchecks = 0;
    for (u64 i = 0; i < cfg->ntasks; i++) {
        iters += task_user[i].iter_done;
        wchecks += task_user[i].wake_checks;
        kwaits += tasks[i].apf_kernel_waits;
        if (tasks[i].exit_code != 0)
            failed++;
    }
    u64 dummies_left, waiters_left = apf_nodes_left(&dummies_left);
    if (waiters_left) {
        kprintf("refkernel: %lu async PF waiters still hashed\n", waiters_left);
        errs += waiters_left;
    }
    if (failed)
        kprintf("refkernel: %lu tasks failed\n", failed);
    errs += failed + errors_global;
    kprintf("refkernel: apf %lu task sleeps (%lu in kernel mode), %lu cpu halts, %lu wake-all, "
            "%lu data checks after wakes, dummies %lu left %lu used %lu dropped %lu\n",
            sl, kwaits, ha, wa, wchecks, dc, dummies_left, du, dd);
    kprintf("refkernel: %lu tasks, %lu iterations, %lu async PF not-present, %lu ready, "
            "%lu corrupt\n",
            cfg->ntasks, iters, np, rd, corrupt_total);
    u64 total = errs + corrupt_total;
    if (total)
        kprintf("refkernel: FAIL (%lu errors)\n", total);
    else
        kprintf("refkernel: PASS\n");
    machine_exit(total > 0xffff ? 0xffff : (u32)total);
}
