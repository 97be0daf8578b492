/*
 * refkernel.h -- the reference guest kernel of apfdbg: types, constants and the data structures
 * that the debugger UI reads by symbol (see docs/refkernel.md).
 *
 * A tiny SMP kernel for apfdbg's machine (docs/guest-abi.md): guest paging off, one run queue per
 * vCPU, CPL 3 tasks entered with iretq, syscall/sysret, an x2APIC timer tick, and the guest half of
 * KVM's asynchronous page faults as Linux 2.6.38 (arch/x86/kernel/kvm.c) implements it.
 */
#ifndef REFKERNEL_H
#define REFKERNEL_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;
typedef int s32;
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)
#define NULL ((void *)0)
#define offsetof(t, m) __builtin_offsetof(t, m)
#define ALIGNED(n) __attribute__((aligned(n)))
#define NORETURN __attribute__((noreturn))
/* kept as its own symbol, for the debugger's breakpoints and backtraces */
#define NOINLINE __attribute__((noinline, noclone))
#define STATIC_ASSERT(c, m) _Static_assert(c, m)

/* ---- limits -------------------------------------------------------------------------------- */
#define MAX_CPUS 16
#define MAX_TASKS_PER_CPU 8
#define MAX_TASKS (MAX_CPUS * MAX_TASKS_PER_CPU)
#define MAX_PAGES_PER_TASK 64
#define PAGE_SIZE 4096
#define KSTACK_SIZE 8192          /* per task, and per CPU for idle */
#define USTACK_SIZE 4096          /* per task (page aligned: a test may page it out) */
#define DFSTACK_SIZE 4096         /* per CPU, IST1, for #DF */
#define TASK_NAME_LEN 16
#define APF_DUMMY_POOL 4096       /* dummy sleeper nodes (wake before wait) */

/* ---- defaults (a build may override them with -D, the boot parameters at run time) -------- */
#ifndef DEFAULT_ITERATIONS
#define DEFAULT_ITERATIONS 6
#endif
#ifndef DEFAULT_TASKS_PER_CPU
#define DEFAULT_TASKS_PER_CPU 4
#endif
#ifndef DEFAULT_PAGES_PER_TASK
#define DEFAULT_PAGES_PER_TASK 16
#endif
#ifndef DEFAULT_TIMER_PERIOD
#define DEFAULT_TIMER_PERIOD 20000   /* virtual-time units per tick and per vCPU: x vCPU count */
#endif
#ifndef DEFAULT_DATA_BASE
#define DEFAULT_DATA_BASE 0x800000
#endif
#ifndef DEFAULT_FLAGS
#define DEFAULT_FLAGS 0
#endif

/* ---- boot parameters: a fixed RAM address the host may fill before the first instruction ---- */
#define PARAMS_ADDR 0x50000
#define PARAMS_MAGIC 0x314b4652u      /* "RFK1" */
struct refkernel_params {
    u32 magic;            /* PARAMS_MAGIC, or the block is ignored */
    u32 iterations;       /* per task; 0: default */
    u32 tasks_per_cpu;    /* 1..MAX_TASKS_PER_CPU; 0: default */
    u32 pages_per_task;   /* 1..MAX_PAGES_PER_TASK; 0: default */
    u32 flags;            /* RKF_* */
    u32 timer_period;     /* APIC timer initial count (divide by 1); 0: default x vCPUs */
    u64 data_base;        /* first task page (4 KiB aligned); 0: default */
};

#define RKF_NO_APF         (1u << 0)   /* never enable async PF ("no-kvmapf") */
#define RKF_NO_SEND_ALWAYS (1u << 1)   /* enable with bit 0 only: no kernel-mode APF asked for */
#define RKF_NO_KSUM        (1u << 2)   /* tasks make no sys_sum: the kernel never reads task pages */
#define RKF_VERBOSE        (1u << 3)   /* print every async PF event on the console */
#define RKF_NO_YIELD       (1u << 4)   /* tasks never yield: only the timer switches them */
#define RKF_NO_TIMER       (1u << 5)   /* no timer tick (tasks switch on yield, exit, APF) */
#define RKF_KSUM_ATOMIC    (1u << 6)   /* every sys_sum runs non-preemptible (else every other) */
#define RKF_KSUM_PREEMPT   (1u << 7)   /* every sys_sum runs preemptible */

/* ---- machine ------------------------------------------------------------------------------- */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS 0x1b
#define USER_CS 0x23
#define TSS_BASE 0x2000
#define TSS_STRIDE 0x80
#define PORT_CONSOLE 0xe9
#define PORT_EXIT 0xf4

#define MSR_EFER 0xc0000080
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_FMASK 0xc0000084
#define MSR_GS_BASE 0xc0000101
#define MSR_KERNEL_GS_BASE 0xc0000102
#define EFER_SCE 1

#define X2APIC_EOI 0x80b
#define X2APIC_SVR 0x80f
#define X2APIC_ICR 0x830
#define X2APIC_LVT_TIMER 0x832
#define X2APIC_TMICT 0x838
#define X2APIC_TDCR 0x83e
#define APIC_SVR_ENABLE (1u << 8)
#define APIC_TIMER_PERIODIC (1u << 17)

#define RFLAGS_IF (1ul << 9)
#define RFLAGS_DF (1ul << 10)
#define RFLAGS_TF (1ul << 8)
#define RFLAGS_AC (1ul << 18)

/* vectors (the numbers Linux uses for the same jobs) */
#define VEC_DF 8
#define VEC_GP 13
#define VEC_PF 14
#define VEC_TIMER 0xef            /* LOCAL_TIMER_VECTOR */
#define VEC_RESCHED 0xfd          /* RESCHEDULE_VECTOR */
#define VEC_SPURIOUS 0xff
#define VEC_SYSCALL 0x100         /* trapframe.vector of a syscall (no IDT vector) */

/* ---- KVM paravirtual interface (Documentation/virtual/kvm/msr.txt of 2.6.38) --------------- */
#define KVM_CPUID_SIGNATURE 0x40000000
#define KVM_CPUID_FEATURES 0x40000001
#define KVM_FEATURE_ASYNC_PF 4
#define MSR_KVM_ASYNC_PF_EN 0x4b564d02
#define KVM_ASYNC_PF_ENABLED (1ul << 0)
#define KVM_ASYNC_PF_SEND_ALWAYS (1ul << 1)
#define KVM_PV_REASON_PAGE_NOT_PRESENT 1
#define KVM_PV_REASON_PAGE_READY 2
#define APF_WAKE_ALL_TOKEN 0xffffffffu

/* The per-vCPU area whose physical address goes into MSR_KVM_ASYNC_PF_EN (64-byte aligned). */
struct apf_area {
    volatile u32 reason;  /* written by the host before it injects #PF; 0 = an ordinary #PF */
    u8 pad[60];
} ALIGNED(64);

/* ---- registers as the entry code saves them (entry.S: PUSH_REGS order) ------------------- */
struct trapframe {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector;           /* IDT vector, or VEC_SYSCALL */
    u64 error;            /* error code (0 when the vector has none) */
    u64 rip, cs, rflags, rsp, ss;   /* as the CPU pushed them (a syscall builds the same) */
};
#define TF_SIZE (22 * 8)

/* ---- spinlocks: always taken with interrupts off ------------------------------------------ */
typedef struct { volatile u32 locked; volatile u32 owner; } spinlock_t;

/* ---- tasks --------------------------------------------------------------------------------- */
enum task_state {
    TASK_UNUSED = 0,
    TASK_RUNNING = 1,     /* on its CPU or waiting on its run queue */
    TASK_SLEEPING = 2,    /* waiting for an async PF "page ready" */
    TASK_DEAD = 3,        /* called exit */
    TASK_IDLE = 4,        /* a CPU's idle task */
};

/* What a task can see of itself at CPL 3 (its "user page"; no paging, so it simply reads it). */
struct task_user {
    u64 id;               /* global task index */
    u64 cpu;
    u64 data;             /* address of its first data page */
    u64 pages;
    u64 iterations;
    u64 flags;            /* RKF_* */
    volatile u64 apf_wakes;   /* the kernel adds 1 each time an async PF wake resumes the task */
    volatile u64 iter_done;   /* the task writes its progress */
    volatile u64 wake_checks; /* full data checks made because of a wake */
    volatile u64 checked_pages;
};

struct task {
    u64 ksp;              /* saved kernel RSP while switched out (switch_to); offset 0 */
    u64 kstack_top;
    s32 id;               /* index into tasks[] / task_name[] */
    s32 cpu;              /* home CPU (tasks never migrate) */
    volatile s32 state;   /* enum task_state */
    s32 on_rq;
    struct task *rq_next, *rq_prev;
    const char *name;     /* = task_name[id] */
    struct task_user *user;
    volatile u32 sleep_token;   /* token it sleeps on (TASK_SLEEPING), for the UI */
    s32 exit_code;
    /* statistics */
    u64 switches_in;
    u64 syscalls;
    u64 preemptions;
    u64 apf_waits;        /* async PF not-present that put it to sleep */
    u64 apf_kernel_waits; /* ... of which in kernel mode (a syscall) */
    u64 corrupt;          /* CORRUPT reports */
};

/* A sleeper: on the waiting task's kernel stack, or a dummy from the pool. */
struct apf_node {
    struct apf_node *next;
    struct apf_node **pprev;   /* NULL once unhashed (woken) */
    u32 token;
    s32 cpu;
    s32 halted;           /* the waiter halts its CPU instead of scheduling */
    s32 dummy;            /* a wake that came before its wait */
    struct task *task;    /* the waiting task (NULL for a dummy) */
};

#define APF_HASH_BITS 8
#define APF_HASH_SIZE (1 << APF_HASH_BITS)
struct apf_bucket {
    spinlock_t lock;
    struct apf_node *first;
};

/* ---- per-CPU data: GS.base points at cpus[i] in the kernel ------------------------------- */
struct cpu {
    struct cpu *self;           /* 0: %gs:0 */
    u64 kstack_top;             /* 8: the current task's kernel stack top (syscall entry) */
    u64 user_rsp;               /* 16: scratch for the syscall entry */
    u64 index;                  /* 24 */
    /* run queue */
    spinlock_t rq_lock;
    struct task *rq_head, *rq_tail;
    s32 rq_len;
    volatile s32 need_resched;
    s32 preempt_count;          /* > 0: the current context must not schedule */
    s32 online;
    struct task idle;
    /* async PF */
    s32 apf_enabled;            /* the MSR took our enable (kvm.c's apf_reason.enabled) */
    s32 apf_send_always;
    u64 apf_msr;                /* what we wrote */
    /* statistics (the summary adds them up) */
    u64 ticks;
    u64 resched_ipis;
    u64 context_switches;
    u64 idle_halts;
    u64 apf_not_present;        /* #PF with reason 1 */
    u64 apf_ready;              /* #PF with reason 2 and a task token */
    u64 apf_wake_all;           /* #PF with reason 2 and token 0xffffffff */
    u64 apf_sleeps;             /* waits that scheduled away */
    u64 apf_halts;              /* waits that halted the CPU (idle / non-preemptible) */
    u64 apf_halt_loops;         /* hlt executed while halted in a wait */
    u64 apf_woken;              /* sleepers this CPU woke */
    u64 apf_dummies;            /* wakes that found no sleeper: dummy left */
    u64 apf_dummies_used;       /* waits that found their dummy */
    u64 apf_dummies_dropped;    /* wakes lost because the dummy pool was empty */
    u64 gp_fixups;              /* #GP skipped through the exception table */
    u64 errors;                 /* unexpected exceptions and the like on this CPU */
} ALIGNED(64);

#define CPU_OFF_KSTACK_TOP 8
#define CPU_OFF_USER_RSP 16

/* ---- globals (symbols the debugger reads) -------------------------------------------------- */
extern struct cpu cpus[MAX_CPUS];
extern struct task *volatile current_task[MAX_CPUS];
extern struct task tasks[MAX_TASKS];
extern struct task_user task_user[MAX_TASKS];
extern char task_name[MAX_TASKS][TASK_NAME_LEN];
extern struct apf_area apf_reason_area[MAX_CPUS];
extern struct apf_bucket apf_sleepers[APF_HASH_SIZE];

struct refkernel_config {   /* the values in effect (defaults, then boot parameters) */
    u64 ncpus;
    u64 iterations;
    u64 tasks_per_cpu;
    u64 pages_per_task;
    u64 flags;
    u64 timer_period;
    u64 data_base;
    u64 ntasks;
    u64 kvm_features;       /* CPUID 0x40000001 EAX (0 without the KVM signature) */
};
extern struct refkernel_config refkernel_config;
extern volatile u64 tasks_exited;
extern volatile u64 errors_global;
extern volatile u64 corrupt_total;

/* ---- small inline helpers ------------------------------------------------------------------ */
static inline struct cpu *this_cpu(void)
{
    struct cpu *c;
    __asm__ volatile("movq %%gs:0, %0" : "=r"(c));
    return c;
}
static inline struct task *current(void) { return current_task[this_cpu()->index]; }

static inline u64 irq_save(void)
{
    u64 f;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(f) : : "memory");
    return f;
}
static inline void irq_restore(u64 f)
{
    if (f & RFLAGS_IF)
        __asm__ volatile("sti" : : : "memory");
}
static inline void cli(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void sti(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }
static inline void mb(void) { __asm__ volatile("lock; orq $0, (%%rsp)" : : : "memory", "cc"); }

/* sti; hlt as one unit: an interrupt that is already pending is taken in hlt, never lost. */
static inline void safe_halt(void) { __asm__ volatile("sti; hlt" : : : "memory"); }

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline u64 read_cr2(void)
{
    u64 v;
    __asm__ volatile("movq %%cr2, %0" : "=r"(v));
    return v;
}
static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline u32 hash_32(u32 val, unsigned bits)
{
    /* include/linux/hash.h of 2010: multiply by GOLDEN_RATIO_PRIME_32, keep the top bits */
    return (u32)(val * 0x9e370001u) >> (32 - bits);
}

static inline void spin_lock(spinlock_t *l)
{
    while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
        while (l->locked)
            cpu_relax();
    l->owner = (u32)this_cpu()->index;
}
static inline void spin_unlock(spinlock_t *l)
{
    l->owner = 0xffffffffu;
    __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/* ---- functions ----------------------------------------------------------------------------- */
/* lib.c (pure: usable at CPL 3 too) */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
u64 strlen(const char *s);
int vsnfmt(char *buf, int size, const char *fmt, va_list ap);
int snfmt(char *buf, int size, const char *fmt, ...);
u64 pattern_base(u64 task, u64 page, u64 iter);
#define PATTERN_STEP 0x9e3779b97f4a7c15ul

/* console.c */
void kputs(const char *s);
void kprintf(const char *fmt, ...);
NORETURN void panic(const char *fmt, ...);
NORETURN void machine_exit(u32 value);

/* entry.S */
extern char idt_stubs[];
void switch_to(u64 *prev_ksp, u64 next_ksp);
void task_first_run(void);
void syscall_entry(void);
int wrmsr_safe(u32 msr, u64 value);     /* 0, or -1 if the wrmsr raised #GP */
extern const u64 __extable_start[], __extable_end[];

/* trap.c */
void idt_init(void);
void idt_load(void);
void trap_dispatch(struct trapframe *tf);
void syscall_dispatch(struct trapframe *tf);
void send_ipi(u32 cpu, u32 vector);
void apic_eoi(void);

/* sched.c */
void sched_cpu_init(struct cpu *c);
void task_setup(struct task *t, int id, int cpu);
void enqueue_task(struct task *t);
void schedule(void);
void wake_up_task(struct task *t);
NORETURN void task_exit(int code);
NORETURN void idle_loop(void);

/* apf.c */
void apf_init(void);
void apf_cpu_init(struct cpu *c);
u32 apf_read_and_reset_reason(void);
void pf_handler(struct trapframe *tf);
void apf_task_wait(u32 token, struct trapframe *tf);
void apf_task_wake(u32 token);
void apf_report(void);
u64 apf_nodes_left(u64 *dummies);

/* main.c */
NORETURN void kmain(u64 cpu, u64 ncpus);
NORETURN void finish(void);

/* user.c (CPL 3) */
NORETURN void user_main(struct task_user *u);

/* syscall numbers (RAX; arguments RDI, RSI, RDX, R10, R8; result RAX) */
#define SYS_YIELD 0       /* give the CPU to the next task of the run queue */
#define SYS_WRITE 1       /* (buf, len): to this vCPU's console; returns len */
#define SYS_EXIT 2        /* (code) */
#define SYS_SUM 3         /* (addr, qwords, atomic): the kernel adds up user memory, in kernel mode */
#define SYS_CORRUPT 4     /* (page, word, expected, found, iteration): report and count a mismatch */
#define SYS_GETCPU 5      /* returns the vCPU index */

#endif
