/* The kernels arch/arm/quants.c provides (aarch64 NEON: the ARMv8.0 neon variant and the
 * ARMv8.2 dotprod + fp16 variant); quants.c leaves these names to it (see quants.h). */
#pragma once

#define EL_ARCH_QUANTIZE_ROW_F16
#define EL_ARCH_QUANTIZE_ROW_Q8_0
#define EL_ARCH_QUANTIZE_ROW_Q8_1
#define EL_ARCH_QUANTIZE_ROW_Q8_K
#define EL_ARCH_F16_TO_F32
#define EL_ARCH_VEC_DOT_F32_F32
#define EL_ARCH_VEC_DOT_F16_F16
#define EL_ARCH_VEC_DOT_BF16_BF16
#define EL_ARCH_VEC_DOT_Q4_0_Q8_0
#define EL_ARCH_VEC_DOT_Q4_1_Q8_1
#define EL_ARCH_VEC_DOT_Q5_0_Q8_0
#define EL_ARCH_VEC_DOT_Q5_1_Q8_1
#define EL_ARCH_VEC_DOT_Q8_0_Q8_0
#define EL_ARCH_VEC_DOT_Q4_K_Q8_K
#define EL_ARCH_VEC_DOT_Q5_K_Q8_K
#define EL_ARCH_VEC_DOT_Q6_K_Q8_K
#define EL_ARCH_GEMV_X8
