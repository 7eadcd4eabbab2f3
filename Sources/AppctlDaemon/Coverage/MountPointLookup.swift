import _AppctlShims
import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Looks up a mount point to mark it, without letting a filesystem hold up the thread that asks (the main loop:
/// signals, reloads, marking every later mount). A path below a FUSE mount is looked up by its server, and a user's
/// server can stall the daemon's lookups for ever (sixth review: `~/a/x` with `~/a` the user's own FUSE filesystem).
/// So: first from the dentry cache alone (`openat2` with `RESOLVE_CACHED`, which never asks a filesystem); when that
/// cannot do, on a thread of its own within a budget (1 s), reported as a mark failure past it and tried again.
///
/// That thread first gives itself a descriptor table of its own holding only the socket its answer goes back on:
/// a FUSE request already with its server is waited out even through SIGKILL, and a stuck thread that shared the
/// daemon's table would keep the fanotify groups open after the daemon ended, with nobody answering their permission
/// events — every process touching a marked filesystem would then wait for ever (the build before had exactly that,
/// with its main thread stuck). A stuck lookup thread now holds nothing but its socket.
final class MountPointLookup: Sendable {
    static let budgetSeconds: Double = 1

    /// Mount ids whose lookup is still waiting on its own thread: not started again meanwhile.
    private let waiting = Mutex<Set<UInt64>>([])
    /// At most this many lookups left waiting (each a thread stuck in a filesystem); past it, mounts needing one are
    /// failures until some finish.
    static let waitingLimit = 8
    /// When the current marking pass's budget ends (`beginPass`).
    private let passDeadline = Mutex<Double>(.infinity)

    /// Starts a marking pass: every lookup in it shares one budget.
    func beginPass() { passDeadline.withLock { $0 = monotonicSeconds() + Self.budgetSeconds } }
    private let nextTag = Atomic<UInt64>(1)
    /// Answers come back on `receiving` from `sending` (a datagram socketpair made at start-up, before confinement).
    private let receiving: Int32
    private let sending: Int32

    init() {
        var fds: [Int32] = [-1, -1]
        if appctl_socketpair(&fds) != 0 { fds = [-1, -1] }
        receiving = fds[0]; sending = fds[1]
    }

    /// An `O_PATH` descriptor of the mount point at `path` (no symlink as its last component), or `timedOut` when the
    /// lookup did not finish within the budget (or one for the same mount is still waiting).
    func pin(_ path: String, mountID: UInt64) throws(Errno) -> FileDescriptor {
        do throws(Errno) {
            return try FileDescriptor.openDirectoryPathCached(path)
        } catch where error == .wouldBlock || error == .noSuchCall || error == .invalidArgument {
            // Not in the cache, or an entry the filesystem must revalidate (EINVAL: a kernel before 5.12 without
            // RESOLVE_CACHED): ask it, but not on this thread.
        }
        guard receiving >= 0 else { throw .timedOut }
        // One budget for a whole marking pass (a second review: a second each, mount after mount, under a server that
        // answers just late, kept the main loop for minutes), and a bounded number of lookups left waiting.
        let deadline = min(monotonicSeconds() + Self.budgetSeconds, passDeadline.withLock { $0 })
        guard deadline > monotonicSeconds() else { throw .timedOut }
        guard waiting.withLock({ $0.count < Self.waitingLimit && $0.insert(mountID).inserted }) else { throw .timedOut }
        let tag = nextTag.wrappingAdd(1, ordering: .relaxed).oldValue
        let socket = sending
        let started = tryStartThread(name: "appctl-lookup") { [self] in
            _ = path.withCString { appctl_lookup_in_private_table($0, socket, tag) }
            waiting.withLock { _ = $0.remove(mountID) }
        }
        guard started else {
            waiting.withLock { _ = $0.remove(mountID) }
            throw .timedOut
        }
        while true {
            // Answers of lookups abandoned earlier may come first: their descriptors are closed.
            var answerTag: UInt64 = 0, error: Int32 = 0, fd: Int32 = -1
            while appctl_receive_lookup(receiving, &answerTag, &error, &fd) == 0 {
                if answerTag == tag {
                    if fd >= 0 { return FileDescriptor(rawValue: fd) }
                    throw Errno(rawValue: error)
                }
                if fd >= 0 { close(fd) }
            }
            let left = deadline - monotonicSeconds()
            guard left > 0 else { throw .timedOut }
            _ = try? pollDescriptors([(FileDescriptor(rawValue: receiving), Int16(POLLIN))],
                                     timeoutMilliseconds: Int32(max(1, (left * 1000).rounded(.up))))
        }
    }
}
