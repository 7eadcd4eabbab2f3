import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// Confines the calling process once its fanotify marks exist: capabilities cut down to `keep`,
/// no_new_privs, and a seccomp filter that kills the process on any syscall outside `allowedSyscalls`.
public enum Confinement {
    /// Linux capability numbers (linux/capability.h).
    public struct Capability: RawRepresentable, Sendable {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        /// `CAP_DAC_OVERRIDE`
        public static let dacOverride = Capability(rawValue: 1)
        /// `CAP_DAC_READ_SEARCH`
        public static let dacReadSearch = Capability(rawValue: 2)
        /// `CAP_SYS_PTRACE` — reading /proc/PID/exe and /proc/PID/cwd of other users' processes.
        public static let sysPtrace = Capability(rawValue: 19)
        /// `CAP_SYS_ADMIN` — `fanotify_mark` for filesystems mounted later; vm.memfd_noexec.
        public static let sysAdmin = Capability(rawValue: 21)
        /// `CAP_SYS_RESOURCE` — writing `user.max_user_namespaces` (a switch to enforce mode after start, and the
        /// restore at exit).
        public static let sysResource = Capability(rawValue: 24)
        /// `CAP_LEASE` — read leases on files other users own (proving that no writer exists while a program is
        /// hashed and exec'd).
        public static let lease = Capability(rawValue: 28)
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func apply(keeping capabilities: [Capability], allowedSyscalls: [String]) throws(Failure) {
        let keep = capabilities.map(\.rawValue)
        guard keep.withUnsafeBufferPointer({ appctl_drop_capabilities($0.baseAddress, $0.count) }) == 0 else {
            throw Failure(description: "cannot drop capabilities: \(Errno.current)")
        }
        var numbers: [Int32] = []
        for name in allowedSyscalls {
            let nr = appctl_seccomp_syscall(name)
            if nr >= 0 { numbers.append(nr) }   // a name this architecture lacks (e.g. `open` elsewhere) is skipped
        }
        let rc = numbers.withUnsafeBufferPointer { appctl_seccomp_install($0.baseAddress, $0.count, nil, 0, EPERM) }
        guard rc == 0 else { throw Failure(description: "cannot install the seccomp filter") }
    }
}
