import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Proves that nobody changes a program someone other than root can write between its hash and the kernel's
/// own write denial (issue 10, case 3). The exec permission event comes *before* `execve` denies writers
/// (`deny_write_access`), so a writer holding the file open could change it while the daemon hashes and close
/// it before the exec goes on. A read lease (`F_SETLEASE F_RDLCK`) on the event's file is granted only when no
/// one has it open for writing, and makes every later open for writing wait until the lease is let go.
///
/// So: the hash worker takes the lease before it reads a byte (refused: a writer exists, the exec is refused
/// as `mutable`), and after the answer hands a duplicate of the descriptor here. The lease is let go once the
/// process's executable is that file (the exec is past `deny_write_access`: from then on a writer gets
/// `ETXTBSY`), once the process is gone, or after `holdSeconds` (an exec that failed). A writer that tried
/// meanwhile waits that long at most.
final class LeaseKeeper: Sendable {
    /// How long a lease is held for an exec that never shows up as the process's executable.
    static let holdSeconds = 1.0

    private struct Held: Sendable {
        var descriptor: FileDescriptor
        /// Every process whose exec of the file waited for this hash: the lease (one per open file, whatever
        /// descriptor lets go of it) is held until each of them is past the write denial.
        var pids: [Int32]
        var device: UInt64
        var inode: UInt64
        var deadline: Double
    }
    private let held = Mutex<[Held]>([])
    private let available = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    let statistics: Statistics

    init(statistics: Statistics) { self.statistics = statistics }

    func start() { startThread(name: "appctl-leases") { [self] in work() } }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        available.signal()
    }

    /// Takes a read lease for the hash of `descriptor`'s file; false when a writer exists (or the filesystem
    /// refuses leases: then nothing proves there is no writer either).
    func lease(_ descriptor: Int32) -> Bool {
        do {
            try FileDescriptor(rawValue: descriptor).takeReadLease()
            statistics.add(.leasesTaken)
            return true
        } catch {
            statistics.add(.leasesRefused)
            return false
        }
    }

    /// A duplicate of the leased descriptor, made before the answer closes the original (the lease lives on
    /// with it); nil when none can be made, and then the lease is let go (it could not be kept past the answer).
    func duplicate(_ descriptor: Int32) -> FileDescriptor? {
        guard let duplicate = try? FileDescriptor(rawValue: descriptor).duplicate() else {
            FileDescriptor(rawValue: descriptor).releaseLease()
            return nil
        }
        return duplicate
    }

    /// Keeps the lease (through `duplicate`) until the exec of `pid` is past the kernel's write denial, the process
    /// is gone, or `holdSeconds` have passed. Called after the answer: nothing here is on the answer's path.
    func keep(_ duplicate: FileDescriptor, forExecsOf pids: [Int32], key: FileKey) {
        let wasIdle = held.withLock { list -> Bool in
            list.append(Held(descriptor: duplicate, pids: pids, device: key.device, inode: key.inode,
                             deadline: monotonicSeconds() + Self.holdSeconds))
            return list.count == 1
        }
        if wasIdle { available.signal() }
    }

    private func work() {
        while !stopping.load(ordering: .relaxed) {
            if held.withLock({ $0.isEmpty }) { available.wait(); continue }
            let now = monotonicSeconds()
            let done = held.withLock { list -> [Held] in
                var finished: [Held] = []
                list.removeAll { h in
                    let passed = h.pids.allSatisfy { pid in
                        guard let exe = try? fileIdentity("/proc/\(pid)/exe") else { return true }   // gone
                        return exe.device == h.device && exe.inode == h.inode
                    }
                    let over = passed || now >= h.deadline
                    if over { finished.append(h) }
                    return over
                }
                return finished
            }
            for h in done {
                h.descriptor.releaseLease()
                h.descriptor.close()
            }
            usleep(200)   // an exec goes on within microseconds of its answer; writers wait at most this much longer
        }
        for h in held.withLock({ l -> [Held] in defer { l.removeAll() }; return l }) {
            h.descriptor.releaseLease()
            h.descriptor.close()
        }
    }
}
