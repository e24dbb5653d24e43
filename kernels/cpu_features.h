/* CPU feature probe and the table of kernel variants (cpu_features.c).
 *
 * Compiled with baseline flags only (into its own small cffi module, and into the ARM test
 * driver), so calling it never executes an instruction the CPU might lack. The variant
 * modules themselves are built with their ISA flags and must only be loaded once
 * el_variant_supported() said yes.
 *
 * Like api.h this header is also a cffi cdef: plain declarations, no macros or includes.
 */

/* Bit i of el_cpu_features() is the feature el_cpu_feature_name(i). A bit is set only when
 * the CPU has the feature and the OS saves the registers it needs (x86: XCR0 via xgetbv). */
unsigned el_cpu_features(void);
int el_cpu_feature_count(void);
const char *el_cpu_feature_name(int i);
/* "x86_64", "aarch64" or "other": the ISA family the variant table below is for. */
const char *el_cpu_arch(void);

/* The variants this ISA family can have, best first: name, a one-line description, and the
 * feature bits a CPU needs to run it. The Python loader takes the first variant that was
 * built and that el_variant_supported() accepts. */
int el_variant_count(void);
const char *el_variant_name(int i);
const char *el_variant_description(int i);
unsigned el_variant_requires(int i);
/* 1 if this CPU has every feature variant i needs, else 0. */
int el_variant_supported(int i);
/* Index of a variant by name, or -1. */
int el_variant_index(const char *name);
