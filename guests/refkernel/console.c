/*
 * console.c -- kernel output on this vCPU's debug console (port 0xe9) and the exit port.
 * A line is formatted on the stack and written with interrupts off, so lines never mix.
 */
#include "refkernel.h"

void kputs(const char *s)
{
    u64 f = irq_save();
    while (*s)
        outb(PORT_CONSOLE, (u8)*s++);
    irq_restore(f);
}

void kprintf(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnfmt(buf, sizeof buf, fmt, ap);
    va_end(ap);
    kputs(buf);
}

/* End the run: the machine's exit status becomes (value << 1) | 1. */
NORETURN void machine_exit(u32 value)
{
    cli();
    for (;;) {
        outl(PORT_EXIT, value);
        __asm__ volatile("hlt");
    }
}

NORETURN void panic(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    cli();
    va_start(ap, fmt);
    vsnfmt(buf, sizeof buf, fmt, ap);
    va_end(ap);
    kprintf("refkernel: PANIC on cpu %d: %s\n", (int)this_cpu()->index, buf);
    u64 errors = errors_global + corrupt_total + 1;
    machine_exit(errors > 0xffff ? 0xffff : (u32)errors);
}
