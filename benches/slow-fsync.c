/*
 * LD_PRELOAD shim for benches/cluster.rs `stall`: every fsync and fdatasync of a dynamically
 * linked process (k8sd: SQLite and std::fs) sleeps K8SD_FSYNC_DELAY_MS milliseconds first, a
 * disk whose syncs are that slow. etcd is a static Go binary making raw syscalls, so it is not
 * affected. Build: cc -shared -fPIC -o slow-fsync.so benches/slow-fsync.c -ldl
 *
 * K8SD_FSYNC_DELAY_FILE instead names a file holding the delay in milliseconds, read at every
 * sync, so a test can slow the disk down after the cluster has formed (a missing or empty file
 * means no delay). tests/integration/raft_multiprocess.rs t16 uses it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long delay_ms(void) {
    const char *path = getenv("K8SD_FSYNC_DELAY_FILE");
    if (path) {
        char buf[32] = {0};
        FILE *f = fopen(path, "r");
        if (!f) return 0;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        return atol(buf);
    }
    const char *v = getenv("K8SD_FSYNC_DELAY_MS");
    return v ? atol(v) : 0;
}

static void delay(void) {
    long ms = delay_ms();
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
