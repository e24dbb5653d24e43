/* A qemu TCG plugin that counts the guest instructions a process executes (issue 18).
 *
 *   gcc -shared -fPIC -O2 -o insn_count.so insn_count.c
 *   qemu-aarch64 -plugin ./insn_count.so,out=/tmp/count ./program
 *
 * Debian's qemu-user 7.2 loads plugins (-plugin, QEMU_PLUGIN) and exports the plugin API, but
 * ships neither contrib/plugins' libinsn.so nor qemu-plugin.h. This file declares the few
 * parts of that API it uses itself, as qemu 7.2 defines them (plugin API version 1; qemu 9
 * moved to version 2 and dropped the inline ops, which this plugin does not use).
 *
 * Counting: when qemu translates a block (TB), it asks this plugin to instrument it; the
 * plugin attaches an execution callback that carries the block's instruction count, and
 * every execution of the block adds that count to one 64-bit total, atomically, so the
 * threads of a multi-threaded guest (each a vCPU in qemu-user) lose no counts. qemu's inline
 * add would be cheaper but is documented as not atomic across vCPUs.
 *
 * Exactness: a block counts all its instructions when it starts, so a block left early by a
 * fault (a guest SIGSEGV, a page qemu must unprotect) counts the instructions after the fault
 * too. Syscalls and branches end blocks, so ordinary programs are counted exactly.
 *
 * At exit the total is written as one decimal line to the file named by the plugin argument
 * `out=PATH`, else to stderr as "insns: N".
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define PLUGIN_EXPORT __attribute__((visibility("default")))

/* ---- the qemu 7.2 plugin API, as far as this plugin uses it ---- */

typedef uint64_t qemu_plugin_id_t;

/* What qemu tells the plugin about itself (passed to qemu_plugin_install). */
typedef struct {
    const char *target_name;        /* "aarch64" */
    struct {
        int min, cur;               /* plugin API versions this qemu accepts */
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus, max_vcpus;
        } system;
    };
} qemu_info_t;

struct qemu_plugin_tb;              /* opaque: a block being translated */

enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,         /* the callback reads no guest registers */
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);

/* The API version this plugin is written against; qemu refuses a plugin outside its
 * [version.min, version.cur] range. */
PLUGIN_EXPORT int qemu_plugin_version = 1;

/* ---- the plugin ---- */

static uint64_t total;              /* instructions executed, all threads */
static char out_path[4096];         /* out=PATH, or empty for stderr */

static void on_block_exec(unsigned int vcpu_index, void *n_insns)
{
    (void)vcpu_index;
    __atomic_fetch_add(&total, (uint64_t)(uintptr_t)n_insns, __ATOMIC_RELAXED);
}

static void on_block_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)n);
}

static void on_guest_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    uint64_t n = __atomic_load_n(&total, __ATOMIC_RELAXED);
    if (out_path[0]) {
        FILE *f = fopen(out_path, "w");
        if (f) {
            bool written = fprintf(f, "%" PRIu64 "\n", n) > 0;
            if (fclose(f) == 0 && written)
                return;
        }
        fprintf(stderr, "insn_count: cannot write %s; the count follows\n", out_path);
    }
    fprintf(stderr, "insns: %" PRIu64 "\n", n);
}

PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof out_path) {
            strcpy(out_path, argv[i] + 4);
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s' (takes out=PATH)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_block_translate);
    qemu_plugin_register_atexit_cb(id, on_guest_exit, NULL);
    return 0;
}
