/* Loaded in front of libfaketime by scripts/faketime-run: monotonic sleeps go straight to the
 * kernel (libfaketime 0.9.10 breaks absolute ones when it does not fake the monotonic clock, and
 * Python 3.11 sleeps that way). Every other clock is left to libfaketime. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req, struct timespec *rem) {
    if (clock_id == CLOCK_MONOTONIC) {
        if (syscall(SYS_clock_nanosleep, clock_id, flags, req, rem) == 0) return 0;
        return errno;
    }
    static clock_nanosleep_fn next;
    if (!next) next = (clock_nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock_id, flags, req, rem);
}
