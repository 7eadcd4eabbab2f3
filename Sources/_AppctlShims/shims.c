#define _GNU_SOURCE 1   // struct ucred
#include "appctl_shims.h"

#include <pthread.h>

#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <errno.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <seccomp.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fsverity.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>

static int bio_to_malloc(BIO *bio, char **out, size_t *len) {
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    if (n <= 0) return APPCTL_E_OPENSSL;
    *out = malloc((size_t)n);
    if (*out == NULL) return APPCTL_E_OPENSSL;
    memcpy(*out, data, (size_t)n);
    *len = (size_t)n;
    return 0;
}

int appctl_ed25519_generate(char **private_pem, size_t *private_len,
                            char **public_pem, size_t *public_len,
                            uint8_t public_raw[32]) {
    int rc = APPCTL_E_OPENSSL;
    EVP_PKEY *key = NULL;
    BIO *priv = NULL, *pub = NULL;
    *private_pem = NULL; *public_pem = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!ctx || EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_keygen(ctx, &key) <= 0) goto out;
    size_t raw_len = 32;
    if (EVP_PKEY_get_raw_public_key(key, public_raw, &raw_len) <= 0 || raw_len != 32) goto out;
    priv = BIO_new(BIO_s_mem());
    pub = BIO_new(BIO_s_mem());
    if (!priv || !pub) goto out;
    if (PEM_write_bio_PrivateKey(priv, key, NULL, NULL, 0, NULL, NULL) <= 0) goto out;
    if (PEM_write_bio_PUBKEY(pub, key) <= 0) goto out;
    if (bio_to_malloc(priv, private_pem, private_len) != 0) goto out;
    if (bio_to_malloc(pub, public_pem, public_len) != 0) { free(*private_pem); *private_pem = NULL; goto out; }
    rc = 0;
out:
    BIO_free(priv); BIO_free(pub); EVP_PKEY_free(key); EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int appctl_ed25519_read_private(const char *pem, size_t len,
                                uint8_t private_raw[32], uint8_t public_raw[32]) {
    int rc = APPCTL_E_PARSE;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (!key) goto out;
    if (EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) { rc = APPCTL_E_KEYTYPE; goto out; }
    size_t a = 32, b = 32;
    if (EVP_PKEY_get_raw_private_key(key, private_raw, &a) <= 0 || a != 32) { rc = APPCTL_E_OPENSSL; goto out; }
    if (EVP_PKEY_get_raw_public_key(key, public_raw, &b) <= 0 || b != 32) { rc = APPCTL_E_OPENSSL; goto out; }
    rc = 0;
out:
    EVP_PKEY_free(key); BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int appctl_ed25519_read_public(const char *pem, size_t len, uint8_t public_raw[32]) {
    int rc = APPCTL_E_PARSE;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    if (!key) goto out;
    if (EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) { rc = APPCTL_E_KEYTYPE; goto out; }
    size_t a = 32;
    if (EVP_PKEY_get_raw_public_key(key, public_raw, &a) <= 0 || a != 32) { rc = APPCTL_E_OPENSSL; goto out; }
    rc = 0;
out:
    EVP_PKEY_free(key); BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int appctl_ed25519_sign(const uint8_t private_raw[32], const uint8_t *message, size_t len,
                        uint8_t signature[64]) {
    int rc = APPCTL_E_OPENSSL;
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, private_raw, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t sig_len = 64;
    // Ed25519 is PureEdDSA: the digest argument must be NULL and signing is one-shot.
    if (key && ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) > 0 &&
        EVP_DigestSign(ctx, signature, &sig_len, message, len) > 0 && sig_len == 64) rc = 0;
    EVP_MD_CTX_free(ctx); EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

int appctl_ed25519_verify(const uint8_t public_raw[32], const uint8_t *message, size_t len,
                          const uint8_t signature[64]) {
    int rc = APPCTL_E_OPENSSL;
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, public_raw, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (key && ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) > 0)
        rc = EVP_DigestVerify(ctx, signature, 64, message, len) == 1 ? 0 : APPCTL_E_BADSIG;
    EVP_MD_CTX_free(ctx); EVP_PKEY_free(key);
    ERR_clear_error();  // a failed verify leaves errors queued that would confuse the next call
    return rc;
}

struct appctl_digest {
    EVP_MD_CTX *sha256;
    EVP_MD_CTX *md5;
    int with_md5;
};

/// appctl needs two digests and Ed25519 from the default provider: no config file, no error strings.
/// (Loading openssl.cnf and the string tables costs memory in every appctl process, the daemon's included.)
static void init_openssl(void) {
    static int done = 0;
    if (done) return;
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS, NULL);
    done = 1;
}

static const EVP_MD *sha256_md(void) {
    init_openssl();
    // Fetch once: the implicit fetch in EVP_sha256() costs a lookup per init.
    static EVP_MD *md = NULL;
    if (md == NULL) md = EVP_MD_fetch(NULL, "SHA256", NULL);
    return md;
}

static const EVP_MD *md5_md(void) {
    init_openssl();
    static EVP_MD *md = NULL;
    if (md == NULL) md = EVP_MD_fetch(NULL, "MD5", NULL);
    return md;
}

appctl_digest *appctl_digest_new(int with_md5) {
    appctl_digest *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->sha256 = EVP_MD_CTX_new();
    d->md5 = EVP_MD_CTX_new();
    if (!d->sha256 || !d->md5 || appctl_digest_reset(d, with_md5) != 0) {
        appctl_digest_free(d);
        return NULL;
    }
    return d;
}

void appctl_digest_free(appctl_digest *d) {
    if (!d) return;
    EVP_MD_CTX_free(d->sha256);
    EVP_MD_CTX_free(d->md5);
    free(d);
}

int appctl_digest_reset(appctl_digest *d, int with_md5) {
    d->with_md5 = with_md5;
    if (EVP_DigestInit_ex(d->sha256, sha256_md(), NULL) <= 0) return APPCTL_E_OPENSSL;
    if (with_md5 && EVP_DigestInit_ex(d->md5, md5_md(), NULL) <= 0) return APPCTL_E_OPENSSL;
    return 0;
}

int appctl_digest_update(appctl_digest *d, const void *bytes, size_t len) {
    if (EVP_DigestUpdate(d->sha256, bytes, len) <= 0) return APPCTL_E_OPENSSL;
    if (d->with_md5 && EVP_DigestUpdate(d->md5, bytes, len) <= 0) return APPCTL_E_OPENSSL;
    return 0;
}

int appctl_digest_final(appctl_digest *d, uint8_t sha256[32], uint8_t md5[16]) {
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(d->sha256, sha256, &n) <= 0 || n != 32) return APPCTL_E_OPENSSL;
    if (d->with_md5) {
        if (EVP_DigestFinal_ex(d->md5, md5, &n) <= 0 || n != 16) return APPCTL_E_OPENSSL;
    }
    return 0;
}

int appctl_seccomp_install(const int *allowed, size_t allowed_count,
                           const int *refused, size_t refused_count, int errno_value) {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx) return APPCTL_E_SECCOMP;
    // Every thread, including any started before the filter.
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    for (size_t i = 0; i < allowed_count && rc == 0; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allowed[i], 0);
    for (size_t i = 0; i < refused_count && rc == 0; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(errno_value), refused[i], 0);
    if (rc == 0) rc = seccomp_load(ctx);
    seccomp_release(ctx);
    return rc == 0 ? 0 : APPCTL_E_SECCOMP;
}

int appctl_drop_capabilities(const int *keep, size_t keep_count) {
    uint32_t mask[2] = {0, 0};
    for (size_t i = 0; i < keep_count; i++) mask[keep[i] / 32] |= 1u << (keep[i] % 32);
    struct __user_cap_header_struct current_header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct current[2];
    if (syscall(SYS_capget, &current_header, current) != 0) return -1;
    /* A capability this process does not have cannot be kept (capset would refuse the whole set): keep what
       there is; the hardening that needs a missing one reports itself. */
    for (int i = 0; i < 2; i++) mask[i] &= current[i].permitted;
    for (int cap = 0; cap <= CAP_LAST_CAP; cap++) {
        if (mask[cap / 32] & (1u << (cap % 32))) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    for (int i = 0; i < 2; i++) { data[i].effective = mask[i]; data[i].permitted = mask[i]; }
    if (syscall(SYS_capset, &header, data) != 0) return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return 0;
}

int appctl_seccomp_syscall(const char *name) {
    int nr = seccomp_syscall_resolve_name(name);
    return nr == __NR_SCMP_ERROR ? -1 : nr;
}

void appctl_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

long appctl_gettid(void) { return syscall(SYS_gettid); }

void appctl_set_thread_nice(int nice) { setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice); }

int appctl_block_signals(const int *signals, int count, sigset_t *out) {
    sigemptyset(out);
    for (int i = 0; i < count; i++) sigaddset(out, signals[i]);
    return pthread_sigmask(SIG_BLOCK, out, NULL);
}

long appctl_peer_uid(int fd) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    return (long)cred.uid;
}

long appctl_peer_pid(int fd) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    return (long)cred.pid;
}

static int appctl_statx(int dirfd, const char *path, int flags, struct appctl_file_status *out) {
    struct statx sx;
    memset(&sx, 0, sizeof sx);
    if (statx(dirfd, path, flags, STATX_BASIC_STATS | STATX_MNT_ID, &sx) != 0) return -1;
    out->device = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    out->inode = sx.stx_ino;
    out->change_time_ns = (int64_t)sx.stx_ctime.tv_sec * 1000000000LL + sx.stx_ctime.tv_nsec;
    out->size = (int64_t)sx.stx_size;
    out->owner = sx.stx_uid;
    out->mode = sx.stx_mode;
    out->attributes = sx.stx_attributes & sx.stx_attributes_mask;
    out->mount_id = (sx.stx_mask & STATX_MNT_ID) ? sx.stx_mnt_id : 0;
    return 0;
}

int appctl_fd_status(int fd, int cached_only, struct appctl_file_status *out) {
    return appctl_statx(fd, "", AT_EMPTY_PATH | (cached_only ? AT_STATX_DONT_SYNC : 0), out);
}

int appctl_measure_verity(int fd, uint16_t *algorithm, uint16_t *size, uint8_t digest[64]) {
    // struct fsverity_digest ends in a flexible array: give the kernel room for the longest (SHA-512).
    union { struct fsverity_digest d; uint8_t bytes[sizeof(struct fsverity_digest) + 64]; } arg;
    memset(&arg, 0, sizeof arg);
    arg.d.digest_size = 64;
    if (ioctl(fd, FS_IOC_MEASURE_VERITY, &arg) != 0) return -1;
    *algorithm = arg.d.digest_algorithm;
    *size = arg.d.digest_size;
    memcpy(digest, arg.d.digest, arg.d.digest_size <= 64 ? arg.d.digest_size : 64);
    return 0;
}

int appctl_open_directory_path_cached(const char *path) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_CACHED;
    return (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
}

int appctl_lookup_in_private_table(const char *path, int sock, uint64_t tag) {
    /* A descriptor table of this thread's own, holding nothing but `sock`: if the lookup never returns (a FUSE
       server that does not answer waits out even SIGKILL), this thread keeps no reference to the daemon's
       fanotify groups, so the kernel can still release them when the daemon ends. */
    if (unshare(CLONE_FILES) != 0) return -1;
    if (sock > 3) syscall(SYS_close_range, 3U, (unsigned)sock - 1, 0U);
    syscall(SYS_close_range, (unsigned)sock + 1, ~0U, 0U);
    int fd = open(path, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
    int32_t error = fd < 0 ? errno : 0;
    struct { uint64_t tag; int32_t error; } message = { tag, error };
    struct iovec iov = { &message, sizeof message };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof control.space;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (fd >= 0) close(fd);
    close(sock);
    return n == (ssize_t)sizeof message ? 0 : -1;
}

int appctl_receive_lookup(int sock, uint64_t *tag, int32_t *error, int *fd) {
    struct { uint64_t tag; int32_t error; } message;
    struct iovec iov = { &message, sizeof message };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space };
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n != (ssize_t)sizeof message) return -1;
    *tag = message.tag; *error = message.error; *fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(fd, CMSG_DATA(c), sizeof(int));
    }
    return 0;
}

int appctl_socketpair(int fds[2]) { return socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds); }

int appctl_replace_descriptor(int with, int fd) { return dup3(with, fd, O_CLOEXEC); }

int appctl_path_status_cached(const char *path, struct appctl_file_status *out) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_CACHED | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0) return -1;
    int rc = appctl_statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, out);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int appctl_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int appctl_rename_exchange(const char *a, const char *b) { return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE); }

int appctl_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int appctl_unshare_mounts(void) { return unshare(CLONE_NEWNS); }
