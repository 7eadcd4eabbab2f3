/*
 * exec-loop: time fork + execve + wait of PROGRAM, N times.
 *
 * Usage: exec-loop [-b PROGRAM_B] [-k CHUNK] [-s OLD=NEW] N PROGRAM [ARGS...]
 * Prints: median_us=<..> p99_us=<..> mean_us=<..> n=<N>
 *
 * With -b, the same N execs of PROGRAM_B (same ARGS) are interleaved in
 * chunks of CHUNK (default 50): A-chunk, B-chunk, A-chunk, ... so that both
 * see the same machine conditions, and a second line is printed:
 *   B median_us=<..> p99_us=<..> mean_us=<..> n=<N> delta_median_us=<A-B>
 * Put PROGRAM on the filesystem under test and PROGRAM_B, a copy, on an
 * unmarked one: the delta is the daemon's cost, paired in time, which holds up
 * on a noisy shared VM far better than two medians taken minutes apart.
 *
 * -s OLD=NEW (with -b): B gets its own argument vector, every argument (argv[0]
 * included) that starts with OLD having that prefix replaced by NEW; without
 * -s both run with the same ARGS (argv[0] = PROGRAM). Needed when the
 * arguments name files on the image under test, e.g.
 *   exec-loop -b /ref/ld.so -s /mnt=/ref N /mnt/ld.so --library-path /mnt /mnt/true
 *
 * Programs are run by path as given (no PATH search); stdout/stderr are
 * inherited. A non-zero exit or a failed exec is counted and reported on
 * stderr (and makes exec-loop exit 1) but still timed.
 *
 * Build: cc -O2 -Wall -o exec-loop exec-loop.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static long failures;

/* one fork + execve + wait; returns elapsed microseconds */
static double run_once(const char *path, char **argv)
{
    double t0 = now_us();
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(1); }
    if (pid == 0) {
        execve(path, argv, environ);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) { perror("waitpid"); exit(1); }
    }
    double dt = now_us() - t0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failures++;
    return dt;
}

/* sorts t; prints the summary line; returns the median */
static double report(const char *prefix, double *t, long n, const char *suffix)
{
    double sum = 0;
    for (long i = 0; i < n; i++) sum += t[i];
    qsort(t, n, sizeof *t, cmp_double);
    double median = (n % 2) ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    long i99 = (long)((n - 1) * 0.99 + 0.5);
    printf("%smedian_us=%.1f p99_us=%.1f mean_us=%.1f n=%ld%s", prefix, median, t[i99], sum / n, n, suffix);
    return median;
}

static void usage(const char *me)
{
    fprintf(stderr, "usage: %s [-b PROGRAM_B] [-k CHUNK] [-s OLD=NEW] N PROGRAM [ARGS...]\n", me);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *prog_b = NULL, *subst = NULL;
    long chunk = 50;
    int opt;
    while ((opt = getopt(argc, argv, "+b:k:s:")) != -1) {
        switch (opt) {
        case 'b': prog_b = optarg; break;
        case 's': subst = optarg; if (!strchr(subst, '=') || subst[0] == '=') usage(argv[0]); break;
        case 'k': chunk = strtol(optarg, NULL, 10); if (chunk <= 0) usage(argv[0]); break;
        default: usage(argv[0]);
        }
    }
    if (argc - optind < 2) usage(argv[0]);
    char *end;
    long n = strtol(argv[optind], &end, 10);
    if (*end || n <= 0) { fprintf(stderr, "exec-loop: bad N '%s'\n", argv[optind]); return 2; }
    char **args = &argv[optind + 1];   /* args[0] = PROGRAM, used as argv[0] too */
    const char *prog_a = args[0];
    if (subst && !prog_b) usage(argv[0]);

    /* B's argument vector: ARGS, or ARGS with the prefix OLD rewritten to NEW */
    char **args_b = args;
    if (subst) {
        size_t nargs = argc - optind - 1, lold = strcspn(subst, "=");
        const char *new = subst + lold + 1;
        args_b = calloc(nargs + 1, sizeof *args_b);
        if (!args_b) { perror("calloc"); return 1; }
        for (size_t i = 0; i < nargs; i++) {
            if (strncmp(args[i], subst, lold) == 0) {
                if (asprintf(&args_b[i], "%s%s", new, args[i] + lold) < 0) { perror("asprintf"); return 1; }
            } else {
                args_b[i] = args[i];
            }
        }
    }

    double *ta = calloc(n, sizeof *ta);
    double *tb = prog_b ? calloc(n, sizeof *tb) : NULL;
    if (!ta || (prog_b && !tb)) { perror("calloc"); return 1; }

    if (!prog_b) {
        for (long i = 0; i < n; i++) ta[i] = run_once(prog_a, args);
        report("", ta, n, "\n");
    } else {
        long ia = 0, ib = 0;
        while (ia < n || ib < n) {
            for (long k = 0; k < chunk && ia < n; k++) ta[ia++] = run_once(prog_a, args);
            for (long k = 0; k < chunk && ib < n; k++) tb[ib++] = run_once(prog_b, args_b);
        }
        double ma = report("", ta, n, "\n");
        /* median of B is computed before the delta is printed */
        double sum = 0;
        for (long i = 0; i < n; i++) sum += tb[i];
        qsort(tb, n, sizeof *tb, cmp_double);
        double mb = (n % 2) ? tb[n / 2] : (tb[n / 2 - 1] + tb[n / 2]) / 2;
        long i99 = (long)((n - 1) * 0.99 + 0.5);
        printf("B median_us=%.1f p99_us=%.1f mean_us=%.1f n=%ld delta_median_us=%.1f\n",
               mb, tb[i99], sum / n, n, ma - mb);
    }
    fflush(stdout);
    if (failures) {
        fprintf(stderr, "exec-loop: %ld of %ld runs failed (non-zero exit or exec error)\n",
                failures, prog_b ? 2 * n : n);
        return 1;
    }
    return 0;
}
