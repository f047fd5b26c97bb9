/* qattn accuracy: placeholder until the INT8 work lands its accuracy command here
 * (it replaces this file; the declaration lives in cli.h). */
#include "cli.h"

int qattn_cli_accuracy(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "qattn accuracy: not available in this build\n");
    return 2;
}
