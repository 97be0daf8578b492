/*
 * sched.c -- tasks, one run queue per vCPU, round robin, the idle loop.
 *
 * Tasks never migrate: a task belongs to cpus[task->cpu] and only that CPU runs it.  Another CPU
 * may wake it (an async PF "page ready" for its token can arrive anywhere): it then puts the task
 * on the owner's run queue under that queue's lock and sends the owner a reschedule IPI.
 * Everything here runs with interrupts off.
 */
#include "refkernel.h"

struct task *volatile current_task[MAX_CPUS];
struct task tasks[MAX_TASKS];
struct task_user task_user[MAX_TASKS];
char task_name[MAX_TASKS][TASK_NAME_LEN];
u8 task_kstacks[MAX_TASKS][KSTACK_SIZE] ALIGNED(4096);
u8 task_ustacks[MAX_TASKS][USTACK_SIZE] ALIGNED(4096);

struct tss {
    u32 reserved0;
    u64 rsp0, rsp1, rsp2;
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3, iomap;
} __attribute__((packed));

static struct tss *cpu_tss(u64 cpu) { return (struct tss *)(TSS_BASE + TSS_STRIDE * cpu); }

void sched_cpu_init(struct cpu *c)
{
    struct task *idle = &c->idle;
    idle->id = -1;
    idle->cpu = (s32)c->index;
    idle->state = TASK_IDLE;
    idle->name = "idle";
    idle->kstack_top = c->kstack_top;
    current_task[c->index] = idle;
}

/* Build task `id` for `cpu`: a kernel stack whose first switch_to "returns" to task_first_run,
 * which irets to user_main(&task_user[id]) at CPL 3. */
void task_setup(struct task *t, int id, int cpu)
{
    struct refkernel_config *cfg = &refkernel_config;
    int slot = id - cpu * (int)cfg->tasks_per_cpu;
    snfmt(task_name[id], TASK_NAME_LEN, "t%d.%d", cpu, slot);
    struct task_user *u = &task_user[id];
    u->id = (u64)id;
    u->cpu = (u64)cpu;
    u->pages = cfg->pages_per_task;
    u->data = cfg->data_base + (u64)id * cfg->pages_per_task * PAGE_SIZE;
    u->iterations = cfg->iterations;
    u->flags = cfg->flags;

    t->id = id;
    t->cpu = cpu;
    t->name = task_name[id];
    t->user = u;
    t->kstack_top = (u64)&task_kstacks[id][KSTACK_SIZE];

    struct trapframe *tf = (struct trapframe *)(t->kstack_top - TF_SIZE);
    memset(tf, 0, sizeof *tf);
    tf->rip = (u64)user_main;
    tf->cs = USER_CS;
    tf->rflags = RFLAGS_IF | 2;
    tf->rsp = (u64)&task_ustacks[id][USTACK_SIZE] - 8;   /* as after a call: RSP + 8 aligned */
    tf->ss = USER_DS;
    tf->rdi = (u64)u;
    u64 *sp = (u64 *)tf;
    *--sp = (u64)task_first_run;    /* switch_to's ret */
    for (int i = 0; i < 6; i++)
        *--sp = 0;                  /* rbp rbx r12 r13 r14 r15 */
    t->ksp = (u64)sp;
    t->state = TASK_RUNNING;
}

/* ---- run queue (caller holds c->rq_lock) --------------------------------------------------- */
static void rq_add_tail(struct cpu *c, struct task *t)
{
    t->rq_next = NULL;
    t->rq_prev = c->rq_tail;
    if (c->rq_tail)
        c->rq_tail->rq_next = t;
    else
        c->rq_head = t;
    c->rq_tail = t;
    t->on_rq = 1;
    c->rq_len++;
}

static void rq_remove(struct cpu *c, struct task *t)
{
    if (t->rq_prev)
        t->rq_prev->rq_next = t->rq_next;
    else
        c->rq_head = t->rq_next;
    if (t->rq_next)
        t->rq_next->rq_prev = t->rq_prev;
    else
        c->rq_tail = t->rq_prev;
    t->rq_next = t->rq_prev = NULL;
    t->on_rq = 0;
    c->rq_len--;
}

void enqueue_task(struct task *t)
{
    struct cpu *c = &cpus[t->cpu];
    u64 f = irq_save();
    spin_lock(&c->rq_lock);
    if (!t->on_rq)
        rq_add_tail(c, t);
    spin_unlock(&c->rq_lock);
    irq_restore(f);
}

/* Give the CPU to the head of the run queue (or idle).  Interrupts must be off.  A running task
 * goes to the tail; a sleeping or dead one does not. */
void schedule(void)
{
    struct cpu *c = this_cpu();
    struct task *prev = current_task[c->index], *next;

    spin_lock(&c->rq_lock);
    c->need_resched = 0;
    if (prev->state == TASK_RUNNING && !prev->on_rq)
        rq_add_tail(c, prev);
    next = c->rq_head;
    if (next)
        rq_remove(c, next);
    else
        next = &c->idle;
    current_task[c->index] = next;
    spin_unlock(&c->rq_lock);

    if (next == prev)
        return;
    c->context_switches++;
    next->switches_in++;
    c->kstack_top = next->kstack_top;
    cpu_tss(c->index)->rsp0 = next->kstack_top;   /* interrupts from CPL 3 land on its stack */
    switch_to(&prev->ksp, next->ksp);
    /* back in prev, on its own stack, interrupts still off */
}

/* Make a sleeping task runnable again (any CPU may call this, interrupts off). */
void wake_up_task(struct task *t)
{
    struct cpu *owner = &cpus[t->cpu];
    struct cpu *c = this_cpu();
    int kick = 0;

    spin_lock(&owner->rq_lock);
    if (t->state == TASK_SLEEPING) {
        t->state = TASK_RUNNING;
        t->sleep_token = 0;
        /* Still current on its CPU (between its check and schedule()): schedule() queues it. */
        if (current_task[t->cpu] != t && !t->on_rq)
            rq_add_tail(owner, t);
        owner->need_resched = 1;   /* harmless for a busy CPU; the idle loop looks at it */
        kick = owner != c;
    }
    spin_unlock(&owner->rq_lock);
    if (kick)
        send_ipi((u32)owner->index, VEC_RESCHED);
}

NORETURN void task_exit(int code)
{
    struct cpu *c = this_cpu();
    struct task *t = current_task[c->index];
    cli();
    t->exit_code = code;
    t->state = TASK_DEAD;
    u64 n = __atomic_add_fetch(&tasks_exited, 1, __ATOMIC_SEQ_CST);
    if (n == refkernel_config.ntasks && c->index != 0)
        send_ipi(0, VEC_RESCHED);     /* vCPU 0 prints the summary */
    schedule();
    panic("a dead task was scheduled again");
}

/* The idle task: look for work with interrupts off, then sti; hlt (the sti shadow makes the pair
 * atomic: an interrupt that arrives in between is taken in hlt). */
NORETURN void idle_loop(void)
{
    struct cpu *c = this_cpu();
    for (;;) {
        cli();
        if (c->index == 0 && tasks_exited == refkernel_config.ntasks)
            finish();
        if (c->rq_head || c->need_resched) {
            schedule();
            continue;
        }
        c->idle_halts++;
        safe_halt();
    }
}
