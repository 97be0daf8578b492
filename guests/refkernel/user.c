/*
 * user.c -- the task program, run at CPL 3 (CS 0x23, SS 0x1b) by every task.
 *
 * It may only use its own stack, its data pages, its struct task_user and the pure helpers of
 * lib.c; it talks to the kernel with syscall.  Each iteration it
 *   1. writes the pattern of (task, page, iteration) over every word of every page, yielding
 *      every few pages, and
 *   2. asks the kernel to add up one page in kernel mode (sys_sum) and compares the sum, then
 *   3. reads every page back and checks it.
 * Whenever the kernel reports an async PF wake (u->apf_wakes moved), it checks all its pages at
 * once: the ones written in this iteration against this iteration's pattern, the others
 * against the previous iteration's.  A mismatch goes to the kernel (sys_corrupt: "CORRUPT task
 * T page P ..." on the console, counted).
 */
#include "refkernel.h"

static inline long syscall5(long nr, long a, long b, long c, long d, long e)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}
#define syscall0(nr) syscall5(nr, 0, 0, 0, 0, 0)

static void u_yield(void) { syscall0(SYS_YIELD); }
static void u_write(const char *s, u64 n) { syscall5(SYS_WRITE, (long)s, (long)n, 0, 0, 0); }
static NORETURN void u_exit(int code)
{
    syscall5(SYS_EXIT, code, 0, 0, 0, 0);
    for (;;)
        ;
}
static u64 u_sum(const void *p, u64 words, int atomic)
{
    return (u64)syscall5(SYS_SUM, (long)p, (long)words, atomic, 0, 0);
}
static void u_corrupt(u64 page, u64 word, u64 expected, u64 found, u64 iter)
{
    syscall5(SYS_CORRUPT, (long)page, (long)word, (long)expected, (long)found, (long)iter);
}

static NOINLINE void u_printf(const char *fmt, ...)
{
    char buf[160];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnfmt(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1)
        n = sizeof buf - 1;
    u_write(buf, (u64)n);
}

#define WORDS (PAGE_SIZE / 8)

static NOINLINE void fill_page(volatile u64 *p, u64 base)
{
    u64 v = base;
    for (u64 w = 0; w < WORDS; w++, v += PATTERN_STEP)
        p[w] = v;
}

/* 1 if the page holds the pattern; else reports the first bad word and returns 0. */
static NOINLINE int check_page(struct task_user *u, u64 page, u64 iter)
{
    const volatile u64 *p = (const volatile u64 *)(u->data + page * PAGE_SIZE);
    u64 v = pattern_base(u->id, page, iter);
    u->checked_pages++;
    for (u64 w = 0; w < WORDS; w++, v += PATTERN_STEP) {
        u64 got = p[w];
        if (got != v) {
            u_corrupt(page, w, v, got, iter);
            return 0;
        }
    }
    return 1;
}

/* After a wake: pages 0..written-1 hold iteration `iter`, the rest iteration iter - 1. */
static NOINLINE void check_all(struct task_user *u, u64 written, u64 iter)
{
    for (u64 page = 0; page < u->pages; page++) {
        if (page < written)
            check_page(u, page, iter);
        else if (iter > 0)
            check_page(u, page, iter - 1);
    }
}

/* The sum of a page of iteration `iter`: sum over w of base + w * step. */
static u64 page_sum(u64 base)
{
    return WORDS * base + PATTERN_STEP * (WORDS * (WORDS - 1) / 2);
}

NORETURN void user_main(struct task_user *u)
{
    u64 seen = u->apf_wakes;
    u64 flags = u->flags;

    for (u64 it = 0; it < u->iterations; it++) {
        for (u64 page = 0; page < u->pages; page++) {
            fill_page((volatile u64 *)(u->data + page * PAGE_SIZE), pattern_base(u->id, page, it));
            if (u->apf_wakes != seen) {
                seen = u->apf_wakes;
                u->wake_checks++;
                check_all(u, page + 1, it);
            }
            if (!(flags & RKF_NO_YIELD) && (page & 3) == 3 && ((page >> 2) + it + u->id) % 3 == 0)
                u_yield();
        }
        if (!(flags & RKF_NO_KSUM)) {
            u64 page = (it * 7 + u->id) % u->pages;
            int atomic = flags & RKF_KSUM_ATOMIC ? 1 : flags & RKF_KSUM_PREEMPT ? 0 : (int)(it & 1);
            u64 want = page_sum(pattern_base(u->id, page, it));
            u64 got = u_sum((const void *)(u->data + page * PAGE_SIZE), WORDS, atomic);
            if (got != want)
                u_corrupt(page, ~0ul, want, got, it);
        }
        for (u64 page = 0; page < u->pages; page++)
            check_page(u, page, it);
        if (u->apf_wakes != seen) {
            seen = u->apf_wakes;
            u->wake_checks++;
            check_all(u, u->pages, it);
        }
        u->iter_done = it + 1;
    }
    u_printf("task %d done: %d iterations, %d async PF wakes, %d checks after a wake\n",
             (int)u->id, (int)u->iter_done, (int)u->apf_wakes, (int)u->wake_checks);
    u_exit(0);
}
