/*
 * LD_PRELOAD shim for benches/cluster.rs `stall`: every fsync and fdatasync of a dynamically
 * linked process (k8sd: SQLite and std::fs) sleeps K8SD_FSYNC_DELAY_MS milliseconds first, a
 * disk whose syncs are that slow. etcd is a static Go binary making raw syscalls, so it is not
 * affected. Build: cc -shared -fPIC -o slow-fsync.so benches/slow-fsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void delay(void) {
    const char *v = getenv("K8SD_FSYNC_DELAY_MS");
    long ms = v ? atol(v) : 0;
    if (ms > 0) {
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay();
    return real(fd);
}
