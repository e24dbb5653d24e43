/* CPU features the Linux kernel reports to user space on arm64 (getauxval AT_HWCAP and
 * AT_HWCAP2): what the kernel-variant probe sees. Plain declarations: cffi's cdef reads this. */

/* 1 if the feature is present, 0 if not, -1 if the name is unknown (or not on arm64). */
int hw_has(const char *name);
/* The raw AT_HWCAP and AT_HWCAP2 words (0 where the platform has none). */
unsigned long hw_hwcap(void);
unsigned long hw_hwcap2(void);
