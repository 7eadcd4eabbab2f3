/*
 * floor-listener: the smallest useful fanotify permission listener.
 *
 * It marks one filesystem and answers FAN_ALLOW to every permission event at
 * once, so that the measured overhead is the kernel -> userspace -> kernel
 * round trip and nothing else (the "floor" any userspace daemon pays).
 *
 * Usage: floor-listener [--open] [--cache] MOUNTPOINT
 *   default: FAN_OPEN_EXEC_PERM only; --open adds FAN_OPEN_PERM.
 *   --cache: after each allow, an evictable inode ignore mark for the marked
 *   events (FAN_MARK_IGNORE | FAN_MARK_EVICTABLE, as appctl's kernel-side
 *   cache places them), so later opens of that inode never leave the kernel:
 *   the floor of any fanotify design that caches verdicts in the kernel.
 * Prints "ready\n" on stdout (flushed) once the mark is in place.
 * SIGTERM/SIGINT end it cleanly (signalfd in the same poll set as the
 * fanotify fd, so a pending read never blocks shutdown). When the fanotify fd
 * is closed the kernel allows any still-pending events.
 *
 * ONLY mark a filesystem you created for the test (loop image, private tmpfs):
 * an unanswered permission event stalls every process touching it. As a
 * guard, MOUNTPOINT must be a mount point and not on the root filesystem.
 *
 * Build: cc -O2 -Wall -o floor-listener floor-listener.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned long long n_events, n_perm;

static int answer(int fan, int fd)
{
    struct fanotify_response r = { .fd = fd, .response = FAN_ALLOW };
    for (;;) {
        ssize_t w = write(fan, &r, sizeof r);
        if (w == (ssize_t)sizeof r) return 0;
        if (w < 0 && errno == EINTR) continue;
        perror("floor-listener: write response");
        return -1;
    }
}

int main(int argc, char **argv)
{
    int want_open = 0, want_cache = 0;
    const char *mnt = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--open") == 0) want_open = 1;
        else if (strcmp(argv[i], "--cache") == 0) want_cache = 1;
        else if (argv[i][0] == '-') { mnt = NULL; break; }
        else if (!mnt) mnt = argv[i];
        else { mnt = NULL; break; }
    }
    if (!mnt) {
        fprintf(stderr, "usage: %s [--open] [--cache] MOUNTPOINT\n", argv[0]);
        return 2;
    }

    /* Safety: FAN_MARK_FILESYSTEM marks the whole filesystem holding the
     * path. Insist on a mount point, and never the root filesystem. */
    struct stat st_m, st_p, st_r;
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/..", mnt);
    if (stat(mnt, &st_m) < 0 || stat(parent, &st_p) < 0 || stat("/", &st_r) < 0) {
        fprintf(stderr, "floor-listener: stat %s: %s\n", mnt, strerror(errno));
        return 1;
    }
    if (!S_ISDIR(st_m.st_mode) || (st_m.st_dev == st_p.st_dev && st_m.st_ino != st_p.st_ino)) {
        fprintf(stderr, "floor-listener: %s is not a mount point; refusing to mark the filesystem holding it\n", mnt);
        return 1;
    }
    if (st_m.st_dev == st_r.st_dev) {
        fprintf(stderr, "floor-listener: %s is on the root filesystem; refusing\n", mnt);
        return 1;
    }

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) { perror("sigprocmask"); return 1; }
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) { perror("signalfd"); return 1; }

    int fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC,
                            O_RDONLY | O_CLOEXEC | O_LARGEFILE);
    if (fan < 0) { perror("fanotify_init"); return 1; }

    uint64_t events = FAN_OPEN_EXEC_PERM | (want_open ? FAN_OPEN_PERM : 0);
    if (fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, events,
                      AT_FDCWD, mnt) < 0) {
        fprintf(stderr, "fanotify_mark(%s): %s\n", mnt, strerror(errno));
        return 1;
    }

    printf("ready\n");
    fflush(stdout);

    /* Aligned buffer: several events per read. */
    static char buf[64 * 1024] __attribute__((aligned(__alignof__(struct fanotify_event_metadata))));
    struct pollfd pfd[2] = {
        { .fd = fan, .events = POLLIN },
        { .fd = sfd, .events = POLLIN },
    };
    int rc = 0;
    for (;;) {
        int p = poll(pfd, 2, -1);
        if (p < 0) {
            if (errno == EINTR) continue;
            perror("poll"); rc = 1; break;
        }
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) break;
        }
        if (!(pfd[0].revents & (POLLIN | POLLERR | POLLHUP))) continue;

        ssize_t len = read(fan, buf, sizeof buf);
        if (len < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            perror("read fanotify"); rc = 1; break;
        }
        struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
        for (; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
            if (m->vers != FANOTIFY_METADATA_VERSION) {
                fprintf(stderr, "floor-listener: metadata version %u != %u\n",
                        m->vers, FANOTIFY_METADATA_VERSION);
                rc = 1; goto out;
            }
            n_events++;
            if (m->fd >= 0) {
                if (m->mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | FAN_ACCESS_PERM)) {
                    n_perm++;
                    if (answer(fan, m->fd) < 0) { close(m->fd); rc = 1; goto out; }
                    if (want_cache)
                        (void)fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_EVICTABLE,
                                            events, m->fd, NULL);
                }
                close(m->fd);
            }
        }
    }
out:
    close(fan); /* the kernel allows anything still pending */
    close(sfd);
    fprintf(stderr, "floor-listener: %llu events, %llu answered\n", n_events, n_perm);
    return rc;
}
