/* mockllm_spawn.h - starts build/mockllm on a free port and reads the port it prints, for
 * the C tests and benchmarks that talk to it. Header-only: test support code. */
#ifndef AP_TEST_MOCKLLM_SPAWN_H
#define AP_TEST_MOCKLLM_SPAWN_H

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs `bin --port 0 args...` (args NULL-terminated, at most 28); the pid, with *port set, or
 * -1 when it did not start. */
static inline pid_t mockllm_spawn(const char *bin, const char *const *args, int *port)
{
    const char *argv[32] = {bin, "--port", "0"};
    int n = 3;
    for (; args[n - 3] != NULL && n < 31; n++)
        argv[n] = args[n - 3];
    argv[n] = NULL;
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    char line[64] = {0};
    size_t used = 0;
    while (pid > 0 && used < sizeof line - 1 && strchr(line, '\n') == NULL) {
        ssize_t r = read(fds[0], line + used, sizeof line - 1 - used);
        if (r <= 0)
            break;
        used += (size_t)r;
    }
    close(fds[0]);
    if (pid < 0 || sscanf(line, "listening on %d", port) != 1) {
        if (pid > 0) {
            kill(pid, SIGTERM);
            waitpid(pid, NULL, 0);
        }
        return -1;
    }
    return pid;
}

#endif
