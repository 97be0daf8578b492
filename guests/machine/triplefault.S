/*
 * triplefault: a vCPU that shuts down on purpose.  The run must end with status 4.
 *
 * IDTR limit 0, then ud2: #UD cannot be delivered (vector 6 is beyond the limit: #GP), the #GP
 * cannot be delivered either (-> #DF), nor the #DF: triple fault, shutdown.
 */
    .include "testlib.inc"

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    PUTS "triple fault ahead\n"
    lidt idtr0(%rip)
    ud2
    PUTS "still running after a triple fault\n"
    FAIL 0x01

    .section .rodata
    .balign 16
idtr0:
    .word 0                             /* limit 0 */
    .quad 0                             /* base 0 */
