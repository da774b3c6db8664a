/*
 * pause: the sandbox ("infra") process of every pod, k8sd's own version of registry.k8s.io/pause.
 *
 * It holds the pod's namespaces open and does nothing else: it sleeps in pause(), reaps any
 * child re-parented to it (it is PID 1 when the pod shares its PID namespace), and exits 0 on
 * SIGINT or SIGTERM. Built with `gcc -static -Os -s` by scripts/build-images.sh; the binary is
 * packed into an OCI image by src/images.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (k8sd)");
        return 0;
    }
    if (getpid() != 1) {
        /* Not an error, matching upstream: useful when testing outside a container. */
        fprintf(stderr, "pause: warning: not running as PID 1\n");
    }
    struct sigaction term = {.sa_handler = on_term};
    struct sigaction chld = {.sa_handler = on_chld, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
        sigaction(SIGCHLD, &chld, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
