/* qattn: the command-line tool. Dispatches to one subcommand (info, bench, run, accuracy);
 * each lives in its own file and is declared in cli.h. Build: the top-level CMakeLists.txt
 * links every .c file of tools/qattn/ into the executable `qattn`. */
#include "cli.h"

#include <string.h>

typedef struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_command;

static const cli_command commands[] = {
    {"info", qattn_cli_info, "version, backends, chosen ISA, threads, CPU model"},
    {"bench", qattn_cli_bench, "time attention shapes: ms, GFLOP/s, GB/s, error against the FP64 oracle"},
    {"run", qattn_cli_run, "attention on .npy inputs, writing .npy outputs"},
    {"accuracy", qattn_cli_accuracy, "accuracy of a precision/scheme against the FP64 oracle"},
    {"calibrate", qattn_cli_calibrate, "INT8 static channel transforms from sample Q/K/V .npy files (writes .npy)"},
};

static void print_usage(FILE *f) {
    fprintf(f, "usage: qattn <command> [options]   (qattn %s)\n\ncommands:\n", qattn_version());
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++) fprintf(f, "  %-9s %s\n", commands[c].name, commands[c].summary);
    fprintf(f, "\n`qattn <command> --help` describes a command's options.\n"
               "Environment: QATTN_ISA=ref|avx2|avxvnni|avx512 and QATTN_BACKEND=cpu|cuda force a path.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        print_usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(name, "--version")) {
        printf("qattn %s\n", qattn_version());
        return CLI_EXIT_OK;
    }
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++)
        if (!strcmp(name, commands[c].name)) return commands[c].run(argc - 1, argv + 1);
    fprintf(stderr, "qattn: unknown command '%s' (try qattn --help)\n", name);
    return CLI_EXIT_USAGE;
}
