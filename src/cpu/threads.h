/* Kept so that existing #include "cpu/threads.h" lines build: the pool moved to src/core (the
 * context owns it and every layer uses it). New code includes "core/threads.h". */
#include "core/threads.h"
