/* Reads the arm64 HWCAP bits; the names are /proc/cpuinfo's "Features" names. */
#include <string.h>
#include <sys/auxv.h>

#include "hwcaps.h"

#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif

struct hw_bit {
    const char *name;
    int word;              /* 1: AT_HWCAP, 2: AT_HWCAP2 */
    unsigned long mask;    /* bit numbers from the kernel's arch/arm64/include/uapi/asm/hwcap.h */
};

static const struct hw_bit HW_BITS[] = {
    {"fp", 1, 1UL << 0},
    {"asimd", 1, 1UL << 1},        /* NEON: every ARMv8-A core */
    {"fphp", 1, 1UL << 9},         /* half-precision scalar arithmetic (ARMv8.2) */
    {"asimdhp", 1, 1UL << 10},     /* half-precision NEON (ARMv8.2): Cortex-A76 and up */
    {"asimddp", 1, 1UL << 20},     /* SDOT/UDOT (ARMv8.2 dotprod): Cortex-A76, not A72 */
    {"sve", 1, 1UL << 22},
    {"i8mm", 2, 1UL << 13},        /* SMMLA (ARMv8.6 int8 matrix multiply) */
};

#if defined(__aarch64__)
unsigned long hw_hwcap(void) { return getauxval(AT_HWCAP); }
unsigned long hw_hwcap2(void) { return getauxval(AT_HWCAP2); }
#else
unsigned long hw_hwcap(void) { return 0; }
unsigned long hw_hwcap2(void) { return 0; }
#endif

int hw_has(const char *name) {
#if defined(__aarch64__)
    for (size_t i = 0; i < sizeof HW_BITS / sizeof HW_BITS[0]; i++) {
        if (strcmp(HW_BITS[i].name, name) == 0) {
            unsigned long word = HW_BITS[i].word == 1 ? hw_hwcap() : hw_hwcap2();
            return (word & HW_BITS[i].mask) != 0;
        }
    }
#else
    (void)name;
    (void)HW_BITS;
#endif
    return -1;
}
