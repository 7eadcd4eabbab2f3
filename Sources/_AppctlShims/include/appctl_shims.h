// C helpers for what does not import into Swift: function-like and variadic macros, and
// OpenSSL sequences that are clearer written once in C. Every function returns 0 on
// success and a negative APPCTL_E_* code on failure; none of them keeps state.
#ifndef APPCTL_SHIMS_H
#define APPCTL_SHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/fanotify.h>
#include <linux/fanotify.h>
#include <fcntl.h>
#include <sys/vfs.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <signal.h>
#include <fnmatch.h>
#include <malloc.h>
#include <openssl/evp.h>

#define APPCTL_E_OPENSSL   (-1)  // OpenSSL failed (out of memory, internal error)
#define APPCTL_E_PARSE     (-2)  // not PEM, or not a key
#define APPCTL_E_KEYTYPE   (-3)  // a key, but not Ed25519
#define APPCTL_E_BADSIG    (-4)  // signature does not verify
#define APPCTL_E_SECCOMP   (-5)  // libseccomp refused

// O_LARGEFILE is not needed for event fds: fanotify_init forces it on 64-bit kernels
// (force_o_largefile() in fs/notify/fanotify/fanotify_user.c).

// ---- Ed25519 (EVP_PKEY_ED25519, PureEdDSA through EVP_DigestSign/EVP_DigestVerify) ----

/// Generates a key pair; returns freshly malloc'ed PEM texts (PKCS#8 private, SPKI public)
/// that the caller frees with `free`, and the raw 32-byte public key.
int appctl_ed25519_generate(char **private_pem, size_t *private_len,
                            char **public_pem, size_t *public_len,
                            uint8_t public_raw[32]);

/// Reads a PEM private key; fails with APPCTL_E_KEYTYPE when it is not Ed25519.
int appctl_ed25519_read_private(const char *pem, size_t len,
                                uint8_t private_raw[32], uint8_t public_raw[32]);

/// Reads a PEM public key; fails with APPCTL_E_KEYTYPE when it is not Ed25519.
int appctl_ed25519_read_public(const char *pem, size_t len, uint8_t public_raw[32]);

int appctl_ed25519_sign(const uint8_t private_raw[32], const uint8_t *message, size_t len,
                        uint8_t signature[64]);

/// 0 when valid, APPCTL_E_BADSIG when not. Clears the OpenSSL error queue either way.
int appctl_ed25519_verify(const uint8_t public_raw[32], const uint8_t *message, size_t len,
                          const uint8_t signature[64]);

// ---- Digests (EVP, SHA-NI where the CPU has it) ----

/// A reusable digest context for SHA-256 and, optionally, MD5 over the same bytes
/// (dpkg records MD5; we trust SHA-256).
typedef struct appctl_digest appctl_digest;
appctl_digest *appctl_digest_new(int with_md5);
void appctl_digest_free(appctl_digest *d);
int appctl_digest_reset(appctl_digest *d, int with_md5);
int appctl_digest_update(appctl_digest *d, const void *bytes, size_t len);
int appctl_digest_final(appctl_digest *d, uint8_t sha256[32], uint8_t md5[16]);

/// Names the calling thread (`prctl(PR_SET_NAME)`), visible in `top -H` and /proc.
void appctl_set_thread_name(const char *name);

/// Sets the calling thread's nice value (setpriority with the thread id: that thread only).
void appctl_set_thread_nice(int nice);

/// Blocks `signals` in the calling thread; threads created afterwards inherit the mask, so only
/// the signalfd sees them.
long appctl_gettid(void);
/// `openat2(AT_FDCWD, path, {O_PATH|O_NOFOLLOW|O_DIRECTORY|O_CLOEXEC, RESOLVE_CACHED})`: a lookup that never asks a
/// filesystem (EAGAIN when a component is not in the dentry cache or must be revalidated: a FUSE entry, say).
int appctl_open_directory_path_cached(const char *path);
/// On the calling thread: give it a descriptor table of its own holding only `sock`, open `path` as in
/// `appctl_open_directory_path_cached` but asking the filesystem, and send `tag`, the errno and the descriptor
/// (SCM_RIGHTS) over `sock`, which it then closes. For lookups that may never return.
int appctl_lookup_in_private_table(const char *path, int sock, uint64_t tag);
/// Receives one such message without waiting: 0 and the fields, or -1 (EAGAIN: none yet).
int appctl_receive_lookup(int sock, uint64_t *tag, int32_t *error, int *fd);
/// `socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds)`.
int appctl_socketpair(int fds[2]);
/// `dup3(with, fd, O_CLOEXEC)` (glibc declares dup3 only under _GNU_SOURCE).
int appctl_replace_descriptor(int with, int fd);
int appctl_block_signals(const int *signals, int count, sigset_t *out);

/// The peer's uid on a connected Unix socket (`SO_PEERCRED`), or -1.
long appctl_peer_uid(int fd);
// SO_PEERCRED's pid of a connected Unix socket's peer; -1 on failure.
long appctl_peer_pid(int fd);

// ---- statx ----

/// What `statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_MNT_ID)` says about an open file (struct statx
/// needs _GNU_SOURCE, which this header must not define: it is set in shims.c only).
struct appctl_file_status {
    uint64_t device;            // st_dev encoding (makedev of stx_dev_major/minor)
    uint64_t inode;
    int64_t change_time_ns;
    int64_t size;
    uint32_t owner;
    uint32_t mode;
    uint64_t attributes;        // STATX_ATTR_* the filesystem reports (and supports)
    uint64_t mount_id;          // 0 when the kernel did not report it
};
#define APPCTL_STATX_ATTR_VERITY 0x00100000ULL   // STATX_ATTR_VERITY
#define APPCTL_STATX_ATTR_MOUNT_ROOT 0x00002000ULL   // STATX_ATTR_MOUNT_ROOT: the path is the root of a mount

/// 0, or -1 with errno set. `cached_only`: `AT_STATX_DONT_SYNC`, so a FUSE or NFS filesystem is not asked
/// (a server that never answers cannot stall the caller; its attributes may then be stale).
int appctl_fd_status(int fd, int cached_only, struct appctl_file_status *out);
/// The same for a path, without asking any filesystem and without following any symlink on the way (`openat2` with
/// `RESOLVE_CACHED | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, then `statx(AT_STATX_DONT_SYNC)`): -1 with EAGAIN
/// when the dentry cache alone cannot answer, ELOOP at a symlink. Safe on a thread that must never wait.
int appctl_path_status_cached(const char *path, struct appctl_file_status *out);

// ---- fs-verity ----

/// FS_IOC_MEASURE_VERITY: the file's fs-verity digest, measured by the kernel in O(1) from the
/// verity descriptor it holds for the open inode. Returns 0 and sets *algorithm (FS_VERITY_HASH_ALG_*)
/// and *size; -1 with errno set otherwise (ENODATA: verity not enabled on this file; ENOTTY or
/// EOPNOTSUPP: the filesystem or kernel has no fs-verity; EOVERFLOW: a digest longer than 64 bytes).
int appctl_measure_verity(int fd, uint16_t *algorithm, uint16_t *size, uint8_t digest[64]);

// ---- seccomp ----

/// Builds and loads a filter that kills the process on any syscall not in `allowed`
/// (and answers `errno_value` for the ones in `refused`, so libraries can fall back).
int appctl_seccomp_install(const int *allowed, size_t allowed_count,
                           const int *refused, size_t refused_count, int errno_value);

/// Keeps only the capabilities in `keep` (bounding, permitted, effective and inheritable sets of the
/// calling thread; threads created later inherit them) and sets no_new_privs.
int appctl_drop_capabilities(const int *keep, size_t keep_count);

/// Resolves a syscall name for this architecture; negative when unknown.
int appctl_seccomp_syscall(const char *name);

// pipe2(2), which Glibc's module map hides behind _GNU_SOURCE. Returns 0 or -1 with errno set.
int appctl_pipe2(int fds[2], int flags);

/// renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE): a GNU extension the Glibc module does not export.
int appctl_rename_exchange(const char *a, const char *b);

// unshare(CLONE_NEWNS): a mount namespace of the caller's own (`appctl maintenance start`). 0 or -1, errno set.
int appctl_unshare_mounts(void);

// memfd_create(name, MFD_CLOEXEC): an anonymous file (a child's standard error). Returns the fd or -1, errno set.
int appctl_memfd(const char *name);

#endif
