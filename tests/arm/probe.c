/* Prints what kernels/cpu_features.c sees on this CPU and the variant edgellm would load:
 * the first variant, best first, whose features the CPU has (every ARM variant is built).
 * Built with baseline flags (tests/test_kernels_arm.py) and run under qemu-aarch64. */
#include <stdio.h>

#include "cpu_features.h"

int main(void) {
    const unsigned f = el_cpu_features();
    printf("arch %s\nfeatures", el_cpu_arch());
    for (int i = 0; i < el_cpu_feature_count(); i++)
        if (f >> i & 1) printf(" %s", el_cpu_feature_name(i));
    printf("\n");
    for (int i = 0; i < el_variant_count(); i++)
        if (el_variant_supported(i)) {
            printf("variant %s\n", el_variant_name(i));
            return 0;
        }
    return 1;
}
