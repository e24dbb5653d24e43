/* CPU feature probe (cpuid + xgetbv on x86-64, getauxval(AT_HWCAP) on aarch64) and the table
 * of kernel variants, best first. Built with baseline flags: see cpu_features.h. */
#include <stddef.h>
#include <string.h>

#include "cpu_features.h"

#define BIT(i) (1u << (i))

#if defined(__x86_64__) || defined(_M_X64)

#include <cpuid.h>

enum { AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL, AVX512VNNI, N_FEATURES };
static const char *const feature_names[N_FEATURES] = {
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
};

/* XCR0: which register states the OS saves on a context switch. */
static unsigned long long read_xcr0(void) {
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static unsigned probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned c1 = c;
    /* xgetbv itself faults unless the OS enabled it (OSXSAVE) */
    if (!(c1 & BIT(27))) return 0;
    const unsigned long long xcr0 = read_xcr0();
    const int os_ymm = (xcr0 & 0x6) == 0x6;      /* SSE and AVX state */
    const int os_zmm = (xcr0 & 0xe6) == 0xe6;    /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!os_ymm || !(c1 & BIT(28))) return 0;    /* no AVX: nothing below is usable */
    unsigned f = 0;
    if (c1 & BIT(12)) f |= BIT(FMA);
    if (c1 & BIT(29)) f |= BIT(F16C);
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    if (b & BIT(5)) f |= BIT(AVX2);
    if (os_zmm) {
        if (b & BIT(16)) f |= BIT(AVX512F);
        if (b & BIT(30)) f |= BIT(AVX512BW);
        if (b & BIT(31)) f |= BIT(AVX512VL);
        if (c & BIT(11)) f |= BIT(AVX512VNNI);
    }
    return f;
}

#define ARCH "x86_64"
#define AVX2_SET (BIT(AVX2) | BIT(FMA) | BIT(F16C))
#define AVX512_SET (AVX2_SET | BIT(AVX512F) | BIT(AVX512BW) | BIT(AVX512VL))
static const struct variant {
    const char *name, *description;
    unsigned requires;
} variants[] = {
    {"avx512vnni", "AVX-512 F/BW/VL with VNNI (vpdpbusd): Ice Lake, Sapphire Rapids, Zen 4",
     AVX512_SET | BIT(AVX512VNNI)},
    {"avx512", "AVX-512 F/BW/VL: Skylake-X", AVX512_SET},
    {"avx2", "AVX2 + FMA + F16C: Haswell and later, Zen", AVX2_SET},
    {"generic", "portable C (SSE2 baseline)", 0},
};

#elif defined(__aarch64__)

#include <sys/auxv.h>

/* Linux hwcap bits (asm/hwcap.h); spelled out so older libc headers still build. */
#define HWCAP_ASIMD_BIT BIT(1)
#define HWCAP_FPHP_BIT BIT(9)
#define HWCAP_ASIMDHP_BIT BIT(10)
#define HWCAP_ASIMDDP_BIT BIT(20)
#define HWCAP2_I8MM_BIT BIT(13)

enum { ASIMD, ASIMDDP, FPHP, ASIMDHP, I8MM, N_FEATURES };
static const char *const feature_names[N_FEATURES] = {"asimd", "asimddp", "fphp", "asimdhp", "i8mm"};

static unsigned probe(void) {
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    unsigned f = 0;
    if (hw & HWCAP_ASIMD_BIT) f |= BIT(ASIMD);
    if (hw & HWCAP_ASIMDDP_BIT) f |= BIT(ASIMDDP);
    if (hw & HWCAP_FPHP_BIT) f |= BIT(FPHP);
    if (hw & HWCAP_ASIMDHP_BIT) f |= BIT(ASIMDHP);
    if (hw2 & HWCAP2_I8MM_BIT) f |= BIT(I8MM);
    return f;
}

#define ARCH "aarch64"
static const struct variant {
    const char *name, *description;
    unsigned requires;
} variants[] = {
    {"dotprod", "ARMv8.2 NEON with dotprod (sdot) and fp16 arithmetic: Cortex-A76 (Raspberry Pi 5)",
     BIT(ASIMD) | BIT(ASIMDDP) | BIT(FPHP) | BIT(ASIMDHP)},
    {"neon", "ARMv8.0 NEON: Cortex-A72 (Raspberry Pi 4), Cortex-A53", BIT(ASIMD)},
    {"generic", "portable C", 0},
};

#else

enum { N_FEATURES };
static const char *const feature_names[1] = {""};
static unsigned probe(void) { return 0; }
#define ARCH "other"
static const struct variant {
    const char *name, *description;
    unsigned requires;
} variants[] = {
    {"generic", "portable C", 0},
};

#endif

#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

unsigned el_cpu_features(void) {
    /* cheap and idempotent: no caching, so no thread-safety question */
    return probe();
}

int el_cpu_feature_count(void) { return N_FEATURES; }

const char *el_cpu_feature_name(int i) {
    return i >= 0 && i < N_FEATURES ? feature_names[i] : NULL;
}

const char *el_cpu_arch(void) { return ARCH; }

int el_variant_count(void) { return N_VARIANTS; }

const char *el_variant_name(int i) { return i >= 0 && i < N_VARIANTS ? variants[i].name : NULL; }

const char *el_variant_description(int i) {
    return i >= 0 && i < N_VARIANTS ? variants[i].description : NULL;
}

unsigned el_variant_requires(int i) { return i >= 0 && i < N_VARIANTS ? variants[i].requires : 0; }

int el_variant_supported(int i) {
    if (i < 0 || i >= N_VARIANTS) return 0;
    return (probe() & variants[i].requires) == variants[i].requires;
}

int el_variant_index(const char *name) {
    for (int i = 0; i < N_VARIANTS; i++)
        if (name && strcmp(variants[i].name, name) == 0) return i;
    return -1;
}
