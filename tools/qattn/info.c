/* qattn info: what this build and machine offer, and what a default context chooses. */
#include "cli.h"
#include "qattn_internal.h" /* qattn_cpu_feature_list */

#include <string.h>

static void print_info_help(void) {
    printf("usage: qattn info [--isa %s] [--threads T] [--json]\n"
           "Prints the version, the backends found (cpu; cuda when this build has it and a\n"
           "device is visible), the ISA a context chooses, its threads, the CPU model and the\n"
           "CPU features found (CPUID with the register state the OS enables).\n",
           cli_isa_names());
}

int qattn_cli_info(int argc, char **argv) {
    cli_opts o;
    cli_opts_init(&o);
    for (int i = 1; i < argc; i++) {
        if (cli_flag_is(argv[i], "--help") || cli_flag_is(argv[i], "-h")) {
            print_info_help();
            return CLI_EXIT_OK;
        }
        cli_flag_result r = cli_opts_parse_flag(&o, argc, argv, &i, "info");
        if (r == CLI_FLAG_ERROR) return CLI_EXIT_USAGE;
        if (r == CLI_FLAG_UNKNOWN) {
            cli_error("info", "unknown option '%s' (try qattn info --help)", argv[i]);
            return CLI_EXIT_USAGE;
        }
    }
    /* Always describe the CPU context: a CUDA context would name the GPU instead of the CPU. */
    qattn_ctx_options copt;
    cli_opts_to_ctx_options(&o, &copt);
    copt.backend = QATTN_BACKEND_CPU;
    qattn_ctx *ctx = cli_ctx_create(&copt, "info");
    if (!ctx) return CLI_EXIT_FAILURE;
    qattn_ctx_info info;
    qattn_status s = qattn_ctx_get_info(ctx, &info);
    qattn_ctx_destroy(ctx);
    if (s != QATTN_OK) {
        cli_error("info", "qattn_ctx_get_info: %s", qattn_status_str(s));
        return CLI_EXIT_FAILURE;
    }
    const char *backends = info.cuda_available ? "cpu cuda" : "cpu";
    char features[256];
    qattn_cpu_feature_list(features, sizeof features);
    if (o.json) {
        cli_json j;
        cli_json_begin(&j, stdout);
        cli_json_str(&j, "version", qattn_version());
        cli_json_str(&j, "backends", backends);
        cli_json_bool(&j, "cuda_available", info.cuda_available);
        cli_json_str(&j, "isa", info.isa_name);
        cli_json_int(&j, "threads", info.n_threads);
        cli_json_str(&j, "cpu", info.device_name);
        cli_json_str(&j, "cpu_features", features);
        cli_json_end(&j);
    } else {
        printf("qattn %s\n", qattn_version());
        printf("backends: %s\n", backends);
        printf("isa:      %s\n", info.isa_name);
        printf("threads:  %d\n", info.n_threads);
        printf("cpu:      %s\n", info.device_name);
        printf("features: %s\n", features);
    }
    return CLI_EXIT_OK;
}
