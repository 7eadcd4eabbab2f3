import AppctlKernel

/// What the confined daemon keeps: its capabilities and every syscall it makes (README, "Confinement").
enum ConfinementProfile {
    /// What the daemon still needs once running (see README, "Confinement"). `sysResource`: without it, a daemon
    /// started in monitor mode and switched to enforce could not set user.max_user_namespaces, nor restore it at exit.
    /// `lease`: read leases on the files of other users whose exec is being decided (`LeaseKeeper`).
    static let keptCapabilities: [Confinement.Capability] = [.sysAdmin, .sysPtrace, .dacOverride, .dacReadSearch, .sysResource, .lease]

    /// Every syscall the confined daemon makes, found with `strace -f -c` over the integration tests;
    /// anything else kills it (SIGSYS). Notably absent: execve/execveat, socket, connect, ptrace, mount.
    static let allowedSyscalls = [
        // memory and threads (Swift runtime, Dispatch, pthreads)
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "clone", "clone3", "set_robust_list", "rseq",
        "futex", "sched_yield", "sched_getaffinity", "gettid", "getpid", "exit", "exit_group", "membarrier",
        "rt_sigprocmask", "rt_sigaction", "rt_sigreturn", "sigaltstack", "tgkill", "getrandom", "prctl", "restart_syscall",
        "prlimit64", "set_tid_address", "arch_prctl", "setpriority",
        // time
        "clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday", "clock_getres",
        // files: policy and key reads, event log, state, learn fragment, /proc reads, event descriptors
        "read", "write", "pread64", "readv", "writev", "openat", "openat2", "open", "close", "fstat", "newfstatat", "stat", "lstat",
        "statx", "lseek", "fcntl", "ioctl", "readlink", "readlinkat", "getdents64", "fsync", "fdatasync", "fadvise64",
        "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat", "chmod", "fchmod",
        "fchmodat", "fstatfs", "statfs", "uname", "getcwd", "access", "faccessat", "faccessat2", "getuid", "geteuid",
        "getgid", "getegid",
        // the overlay store's lock (maintenance windows write overlay:maintenance)
        "flock",
        // event loop, signals, control socket (already listening), systemd notification (socket already open)
        "poll", "ppoll", "eventfd2", "signalfd4", "accept", "accept4", "setsockopt", "getsockopt", "sendto", "recvfrom",
        "shutdown", "fanotify_mark",
        // mount point lookups on a thread with a descriptor table of its own, answering over a socketpair
        "unshare", "close_range", "sendmsg", "recvmsg", "dup3",
    ]
}
