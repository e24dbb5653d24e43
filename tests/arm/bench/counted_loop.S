// A guest program whose instruction count is known exactly, for insn_count.c's check
// (tests/test_bench_arm.py): no libc, LOOPS iterations of a two-instruction loop, then exit.
//   aarch64-linux-gnu-gcc -nostdlib -static -DLOOPS=1000 -o counted_loop counted_loop.S
// Executes 1 + 2 * LOOPS + 3 instructions.
#ifndef LOOPS
#define LOOPS 1000
#endif
    .text
    .globl _start
_start:
    ldr x0, =LOOPS          // 1
1:  subs x0, x0, #1         // 2 per iteration
    b.ne 1b
    mov x0, #0              // 3 to exit(0)
    mov x8, #93
    svc #0
