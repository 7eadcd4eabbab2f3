/*
 * open-loop: open and read every regular file in DIR (non-recursive), in
 * PASSES passes (default 5); prints the median pass time and the cost per file.
 *
 * Usage: open-loop [-b DIR_B] DIR [PASSES]
 * Prints: median_pass_s=<..> per_file_us=<..> files=<..> passes=<..> bytes=<..>
 * With -b, passes over DIR_B (a copy of DIR on an unmarked filesystem) are
 * interleaved with those over DIR (A, B, A, B, ...), and a second line says
 *   B median_pass_s=<..> per_file_us=<..> files=<..> delta_per_file_us=<A-B>
 *
 * The file list is collected once (readdir + fstatat, not timed); each pass
 * does openat(O_RDONLY) + read to EOF + close for every file, so with an
 * FAN_OPEN_PERM listener each file costs one permission round trip.
 *
 * Build: cc -O2 -Wall -o open-loop open-loop.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct set {
    int dfd;
    size_t n;
    char **names;
    double *pass_s;
    unsigned long long bytes;
};

static long errors;
static char buf[1 << 16];

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int load(struct set *s, const char *dir, int passes)
{
    s->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dfd < 0) { perror(dir); return -1; }
    DIR *d = fdopendir(dup(s->dfd));
    if (!d) { perror("fdopendir"); return -1; }
    size_t cap = 1024;
    s->n = 0;
    s->names = malloc(cap * sizeof *s->names);
    struct dirent *de;
    while ((de = readdir(d))) {
        struct stat st;
        if (fstatat(s->dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
        if (!S_ISREG(st.st_mode)) continue;
        if (s->n == cap) s->names = realloc(s->names, (cap *= 2) * sizeof *s->names);
        s->names[s->n++] = strdup(de->d_name);
    }
    closedir(d);
    if (s->n == 0) { fprintf(stderr, "open-loop: no regular files in %s\n", dir); return -1; }
    s->pass_s = calloc(passes, sizeof *s->pass_s);
    return 0;
}

static void one_pass(struct set *s, int p)
{
    unsigned long long bytes = 0;
    double t0 = now_s();
    for (size_t i = 0; i < s->n; i++) {
        int fd = openat(s->dfd, s->names[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { errors++; continue; }
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0) bytes += r;
        if (r < 0) errors++;
        close(fd);
    }
    s->pass_s[p] = now_s() - t0;
    s->bytes = bytes;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return (n % 2) ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    const char *dir_b = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+b:")) != -1) {
        if (opt == 'b') dir_b = optarg;
        else goto usage;
    }
    if (argc - optind < 1 || argc - optind > 2) {
usage:
        fprintf(stderr, "usage: %s [-b DIR_B] DIR [PASSES]\n", argv[0]);
        return 2;
    }
    int passes = argc - optind == 2 ? atoi(argv[optind + 1]) : 5;
    if (passes <= 0) { fprintf(stderr, "open-loop: bad PASSES\n"); return 2; }

    struct set a, b;
    if (load(&a, argv[optind], passes) < 0) return 1;
    if (dir_b && load(&b, dir_b, passes) < 0) return 1;
    for (int p = 0; p < passes; p++) {
        one_pass(&a, p);
        if (dir_b) one_pass(&b, p);
    }
    double ma = median(a.pass_s, passes);
    printf("median_pass_s=%.6f per_file_us=%.2f files=%zu passes=%d bytes=%llu\n",
           ma, ma * 1e6 / a.n, a.n, passes, a.bytes);
    if (dir_b) {
        double mb = median(b.pass_s, passes);
        printf("B median_pass_s=%.6f per_file_us=%.2f files=%zu delta_per_file_us=%.2f\n",
               mb, mb * 1e6 / b.n, b.n, ma * 1e6 / a.n - mb * 1e6 / b.n);
    }
    fflush(stdout);
    if (errors) { fprintf(stderr, "open-loop: %ld open/read errors\n", errors); return 1; }
    return 0;
}
