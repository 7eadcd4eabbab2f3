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
/// as `mutable`), and after the answer hands a duplicate of the descriptor here. The lease is let go once one of
/// the process's threads runs that file (`/proc/PID/task/*/exe`: the exec is past `deny_write_access`, and a
/// writer gets `ETXTBSY` from then on), once the process is gone (`/proc/PID` reaped: its main thread having
/// exited proves nothing, a review showed), once no thread is inside `execve` any more (the exec failed), or at
/// the latest after the kernel's own lease-break time (`/proc/sys/fs/lease-break-time`, 45 s by default: a writer
/// waiting on the lease is let through by the kernel then anyway).
final class LeaseKeeper: Sendable {
    /// How long a lease is held for an exec that never shows up as a thread's executable: the kernel's lease-break
    /// time, read once (1 to 300 s).
    static let holdSeconds: Double = {
        let text = (try? readSmallFile("/proc/sys/fs/lease-break-time", limit: 64)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return Double(min(300, max(1, Int(text.split(separator: "\n").first ?? "") ?? 45)))
    }()
    /// At most this many leases are held at once; beyond it new execs of files others can write are refused
    /// (`mutable`) rather than left unproven.
    static let limit = 4096
    /// At most this many per process: one process cannot fill the table for everyone (a review showed a process whose
    /// sibling thread spins, so that its failed execs looked in progress, holding leases by the thousand).
    static let limitPerProcess = 16

    /// Whether `pid` may have one more lease held for it.
    func mayHold(for pid: Int32) -> Bool {
        held.withLock { list in list.reduce(0) { $0 + ($1.pids.contains(pid) ? 1 : 0) } } < Self.limitPerProcess
    }

    private struct Held: Sendable {
        var descriptor: FileDescriptor
        /// Every process whose exec of the file waited for this hash: the lease (one per open file, whatever
        /// descriptor lets go of it) is held until each of them is past the write denial.
        var pids: [Int32]
        var key: FileKey
        /// The digest of an allowed, known content: once every exec is past its write denial, the lease is kept
        /// as a verdict (`VerdictLease`) instead of being let go.
        var verdict: SHA256Digest?
        var deadline: Double
        /// When to look next, and how long to wait after that: looking costs a few /proc reads per thread, so the
        /// interval doubles from 1 ms up to 20 ms (an exec is past its write denial within a millisecond or so;
        /// a writer waits that much longer at most).
        var nextCheck: Double
        var interval: Double
        var since: Double
    }
    private let held = Mutex<[Held]>([])
    private let stopping = Atomic<Bool>(false)
    let statistics: Statistics
    /// Wakes the keeper's thread (new work, shutdown).
    private let wakeup: EventNotifier?
    /// SIGIO, which a writer breaking one of the daemon's leases raises; read on the keeper's own thread, so that no
    /// other thread's work (the main loop marks new mounts, which can wait on a filesystem) delays a waiting writer.
    private let breakSignals: SignalReceiver?

    /// A verdict for a file someone other than root can write, kept for its later execs while a read lease proves
    /// that nobody can change the file (issue 14): the kernel grants the lease only while no descriptor or shared
    /// mapping can write the file, and every later open for writing or truncate must break it first. Every use
    /// checks that the lease is intact (`F_GETLEASE`); a break is also seen through SIGIO, and at the latest by the
    /// scan every second, which forgets the digest and lets the lease go once every exec decided from it is past
    /// the kernel's write denial, as for the leases above. A change of owner, mode, ACL or links changes the file's
    /// ctime, so its key: the verdict is not found again, and the scan lets it go.
    private struct VerdictLease {
        var descriptor: FileDescriptor
        var digest: SHA256Digest
        var lastUsed: Double
        /// Threads whose exec this verdict answered and that may not be past their write denial yet (each once).
        var recentExecs: [(pid: Int32, at: Double)]
    }
    private struct Verdicts {
        var table: [FileKey: VerdictLease] = [:]
        /// How many verdicts' `recentExecs` each thread is in: at most `limitPerProcess`, so that one thread cannot
        /// make the keeper hold leases by the thousand when those verdicts are broken (a review showed it).
        var registrations: [Int32: Int] = [:]

        mutating func unregister(_ pids: [Int32]) {
            for pid in pids {
                let n = (registrations[pid] ?? 1) - 1
                registrations[pid] = n > 0 ? n : nil
            }
        }

        mutating func remove(_ key: FileKey) -> VerdictLease? {
            guard let entry = table.removeValue(forKey: key) else { return nil }
            unregister(entry.recentExecs.map(\.pid))
            return entry
        }
    }
    private let verdicts = Mutex(Verdicts())
    /// A verdict unused this long (60 s) is let go: its descriptor keeps the filesystem busy (`umount` refuses it).
    static let idleSeconds: Double = 60
    /// `leased-verdicts`: at most this many are kept (each is a descriptor and a lease); 0 keeps none.
    let verdictLimit: Int
    /// Execs decided from one verdict and perhaps not yet past their write denial, at most; beyond it an exec is
    /// hashed under a lease of its own (a break must not wait on an unbounded list).
    static let recentExecLimit = 256

    init(statistics: Statistics, verdictLimit: Int = 0, breakSignals: SignalReceiver? = nil) {
        self.statistics = statistics
        self.verdictLimit = max(0, min(verdictLimit, Self.limit))
        self.breakSignals = breakSignals
        wakeup = try? EventNotifier()
    }

    /// The digest of a file others can write whose lease is held and intact, or nil. `execBy`: the thread whose
    /// exec this answers, which a break waits for. Runs on the event thread: a lock, a lookup and one `fcntl`,
    /// never a /proc read (a full list is answered with nil, and the exec is hashed under a lease of its own).
    func verdict(for key: FileKey, execBy pid: Int32?) -> SHA256Digest? {
        guard verdictLimit > 0 else { return nil }
        let now = monotonicSeconds()
        return verdicts.withLock { v -> SHA256Digest? in
            guard var entry = v.table[key], entry.descriptor.holdsUnbrokenReadLease else { return nil }
            if let pid {
                if let i = entry.recentExecs.firstIndex(where: { $0.pid == pid }) {
                    entry.recentExecs[i].at = now
                } else {
                    guard entry.recentExecs.count < Self.recentExecLimit, v.registrations[pid, default: 0] < Self.limitPerProcess else { return nil }
                    entry.recentExecs.append((pid, now))
                    v.registrations[pid, default: 0] += 1
                }
            }
            entry.lastUsed = now
            v.table[key] = entry
            return entry.digest
        }
    }

    /// Looks for leased verdicts a writer broke (or whose file changed owner, mode, ACL or links, or that went unused
    /// for `idleSeconds`) and gives them up: the digest first, then the lease once the execs it answered are past
    /// their write denial. On the keeper's thread, on SIGIO and at least once a second.
    private func checkBreaks() {
        let now = monotonicSeconds()
        let snapshot = verdicts.withLock { $0.table.map { ($0.key, $0.value.descriptor, $0.value.lastUsed) } }
        guard !snapshot.isEmpty else { return }
        var gone: [FileKey] = []
        var breaks = 0
        for (key, descriptor, lastUsed) in snapshot {
            if now - lastUsed > Self.idleSeconds {
                gone.append(key)
            } else if !descriptor.holdsUnbrokenReadLease {
                gone.append(key); breaks += 1
            } else if (try? descriptor.identity()).map(FileKey.init) != key {
                gone.append(key)
            }
        }
        guard !gone.isEmpty else { return }
        let (removed, count) = verdicts.withLock { v in (gone.compactMap { key in v.remove(key).map { (key, $0) } }, v.table.count) }
        statistics.add(.leaseBreaks, breaks)
        statistics.set(.leasedVerdicts, count)
        for (key, entry) in removed { letGo(entry, key: key) }
    }

    /// Drops from each verdict's `recentExecs` the threads certainly past their write denial: gone (a thread that
    /// execs takes over its process's id, so its own id goes), or in a process that runs the file. On the keeper's
    /// thread, every 100 ms while any list is not empty.
    private func pruneRecentExecs() {
        let now = monotonicSeconds()
        let snapshot = verdicts.withLock { v in v.table.compactMap { $0.value.recentExecs.isEmpty ? nil : ($0.key, $0.value.recentExecs.map(\.pid)) } }
        for (key, pids) in snapshot {
            let passed = Set(pids.filter { Self.isPastWriteDenial($0, of: key) })
            verdicts.withLock { v in
                guard var entry = v.table[key] else { return }
                // Past the kernel's lease-break time a writer goes on regardless (the residual SECURITY.md states).
                let (drop, keep) = entry.recentExecs.reduce(into: ([Int32](), [(pid: Int32, at: Double)]())) { acc, e in
                    if passed.contains(e.pid) || now - e.at > Self.holdSeconds { acc.0.append(e.pid) } else { acc.1.append(e) }
                }
                guard !drop.isEmpty else { return }
                entry.recentExecs = keep
                v.table[key] = entry
                v.unregister(drop)
            }
        }
    }

    /// Lets a verdict's lease go: at once when no exec it answered may still be before its write denial, else
    /// through the held list, like a lease taken for a hash. `key`: the one the verdict was kept under (the file's
    /// identity now may differ, or not be readable: the execs in flight are the ones to wait for either way).
    private func letGo(_ entry: VerdictLease, key: FileKey) {
        let now = monotonicSeconds()
        let pids = entry.recentExecs.filter { now - $0.at <= Self.holdSeconds }.map(\.pid)
        guard !pids.isEmpty, !stopping.load(ordering: .relaxed) else {
            entry.descriptor.releaseLease()
            entry.descriptor.close()
            return
        }
        keep(entry.descriptor, forExecsOf: pids, key: key, since: now - 0.01)
    }

    /// Keeps the lease of a hash whose execs all passed as a verdict, if it is still intact and the file unchanged;
    /// false when it was not kept (the caller lets it go).
    private func adopt(_ h: Held) -> Bool {
        guard verdictLimit > 0, let digest = h.verdict, !stopping.load(ordering: .relaxed),
              h.descriptor.holdsUnbrokenReadLease, (try? h.descriptor.identity()).map(FileKey.init) == h.key else { return false }
        let now = monotonicSeconds()
        var evicted: (FileKey, VerdictLease)? = nil
        let (kept, count) = verdicts.withLock { v -> (Bool, Int) in
            guard v.table[h.key] == nil else { return (false, v.table.count) }   // another exec's lease holds it already
            if v.table.count >= verdictLimit, let oldest = v.table.min(by: { $0.value.lastUsed < $1.value.lastUsed }) {
                evicted = v.remove(oldest.key).map { (oldest.key, $0) }
            }
            v.table[h.key] = VerdictLease(descriptor: h.descriptor, digest: digest, lastUsed: now, recentExecs: [])
            return (true, v.table.count)
        }
        statistics.set(.leasedVerdicts, count)
        if let (key, entry) = evicted { letGo(entry, key: key) }
        return kept
    }

    func start() { startThread(name: "appctl-leases") { [self] in work() } }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        wakeup?.signal()
    }

    /// Takes a read lease for the hash of `descriptor`'s file; false when a writer exists (or the filesystem
    /// refuses leases: then nothing proves there is no writer either).
    func lease(_ descriptor: Int32) -> Bool {
        guard held.withLock({ $0.count }) < Self.limit else {
            statistics.add(.leasesRefused)
            return false
        }
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
    /// `verdict`: the digest of allowed, known content, kept under the lease afterwards (`leased-verdicts`).
    func keep(_ duplicate: FileDescriptor, forExecsOf pids: [Int32], key: FileKey, verdict: SHA256Digest? = nil, since: Double? = nil) {
        let wasIdle = held.withLock { list -> Bool in
            let now = monotonicSeconds()
            list.append(Held(descriptor: duplicate, pids: pids, key: key, verdict: verdict,
                             deadline: now + Self.holdSeconds, nextCheck: now + 0.001, interval: 0.001, since: since ?? now))
            return list.count == 1
        }
        if wasIdle { wakeup?.signal() }
    }

    /// Whether the exec of `pid` is certainly past the kernel's write denial for the file: the thread is gone (reaped,
    /// or it exec'd and took over its process's id), or one of its process's threads runs the file.
    static func isPastWriteDenial(_ pid: Int32, of key: FileKey) -> Bool {
        isGone(pid) || anyThread(of: pid, runs: key.device, key.inode)
    }

    /// Whether one of the process's threads runs the file: its exec got past the kernel's write denial.
    static func anyThread(of pid: Int32, runs device: UInt64, _ inode: UInt64) -> Bool {
        guard let threads = try? listDirectory("/proc/\(pid)/task") else { return false }
        return threads.contains { tid in
            guard let exe = try? fileIdentity("/proc/\(pid)/task/\(tid)/exe") else { return false }
            return exe.device == device && exe.inode == inode
        }
    }

    /// Whether any thread of the process may be inside `execve`/`execveat`: `/proc/PID/task/TID/syscall` names the
    /// call a thread is blocked in (59 and 322 on x86_64, 221 and 281 on arm64), or says `running` when it is on a
    /// CPU (then it may be, and the answer is yes). Needs ptrace access (`CAP_SYS_PTRACE`).
    /// Any error other than "no such process or thread" (EMFILE, an LSM's EPERM, …) counts as "maybe": the lease
    /// is then held, never let go on a failed read.
    static func anyThreadInExec(of pid: Int32) -> Bool {
        let threads: [String]
        do throws(Errno) { threads = try listDirectory("/proc/\(pid)/task") } catch { return error != .noSuchFile && error != Errno(rawValue: ESRCH) }
        #if arch(x86_64)
        // execve and execveat, and their numbers on the 32-bit entry (`int 0x80`: 11 and 358), which a 64-bit
        // process can use too (a review showed the 32-bit number in the file).
        let execCalls: Set<Substring> = ["59", "322", "11", "358"]
        #else
        let execCalls: Set<Substring> = ["221", "281"]
        #endif
        return threads.contains { tid in
            let bytes: [UInt8]
            do throws(Errno) { bytes = try readSmallFile("/proc/\(pid)/task/\(tid)/syscall", limit: 512) } catch {
                return error != .noSuchFile && error != Errno(rawValue: ESRCH)
            }
            let first = String(decoding: bytes, as: UTF8.self).split(separator: " ", maxSplits: 1).first ?? ""
            let word = first.hasSuffix("\n") ? first.dropLast() : first
            return word == "running" || execCalls.contains(word)
        }
    }

    /// Gone: reaped (`/proc/PID` does not exist). Pid 0 (a process outside the daemon's pid namespace, as fanotify
    /// reports it) and any read error other than ENOENT are not "gone".
    static func isGone(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        do throws(Errno) { _ = try fileIdentity("/proc/\(pid)"); return false } catch { return error == .noSuchFile }
    }

    private func work() {
        var lastScan = monotonicSeconds()
        var breakSeen = false
        var watched: [(FileDescriptor, Int16)] = []
        if let wakeup { watched.append((wakeup.descriptor, Int16(POLLIN))) }
        if let breakSignals { watched.append((breakSignals.descriptor, Int16(POLLIN))) }
        while !stopping.load(ordering: .relaxed) {
            let now = monotonicSeconds()
            releaseDue(now: now)
            // Leased verdicts: a break seen through SIGIO is handled at once, anything else once a second.
            if breakSeen || now - lastScan >= 1 {
                checkBreaks()
                lastScan = now
                breakSeen = false
            }
            let pending = verdicts.withLock { v in v.table.values.contains { !$0.recentExecs.isEmpty } }
            if pending { pruneRecentExecs() }
            // Sleep until the next held lease is due, the next prune or scan, new work, or SIGIO.
            var timeout: Double = verdicts.withLock { $0.table.isEmpty } ? -1 : 1.0
            if pending { timeout = 0.1 }
            if let next = held.withLock({ $0.map(\.nextCheck).min() }) {
                let untilNext = max(0.0001, next - monotonicSeconds())
                timeout = timeout < 0 ? untilNext : min(timeout, untilNext)
            }
            let milliseconds: Int32 = timeout < 0 ? -1 : Int32(max(1, min(1000, (timeout * 1000).rounded(.up))))
            let revents = (try? pollDescriptors(watched, timeoutMilliseconds: milliseconds)) ?? []
            if let wakeup, revents.first.map({ $0 & Int16(POLLIN) != 0 }) == true {
                var count: UInt64 = 0
                _ = read(wakeup.descriptor.rawValue, &count, 8)
            }
            if let breakSignals, revents.count == watched.count, revents.last.map({ $0 & Int16(POLLIN) != 0 }) == true {
                while breakSignals.next() != nil { breakSeen = true }
            }
        }
        for h in held.withLock({ l -> [Held] in defer { l.removeAll() }; return l }) {
            h.descriptor.releaseLease()
            h.descriptor.close()
        }
        for entry in verdicts.withLock({ v -> [VerdictLease] in defer { v = Verdicts() }; return Array(v.table.values) }) {
            entry.descriptor.releaseLease()
            entry.descriptor.close()
        }
        statistics.set(.leasedVerdicts, 0)
    }

    /// The held leases that are due: each let go once every exec it waits for is past the write denial (or its
    /// process gone, or its exec failed), or kept as a verdict; the rest looked at again later.
    private func releaseDue(now: Double) {
        // Which entries are due, taken out under the lock; the /proc reads happen outside it (hash workers take
        // the same lock to add leases).
        let due = held.withLock { list -> [Held] in
            let (ready, waiting) = list.reduce(into: ([Held](), [Held]())) { acc, h in
                if h.nextCheck <= now || now >= h.deadline { acc.0.append(h) } else { acc.1.append(h) }
            }
            list = waiting
            return ready
        }
        guard !due.isEmpty else { return }
        var done: [Held] = []
        var again: [Held] = []
        for var h in due {
            let passed = h.pids.allSatisfy { pid in
                // Gone (reaped): no thread is left to exec. (`kill(pid, 0)` would say the same, but the seccomp
                // filter allows no signal-sending call.) Or running the file.
                if Self.isPastWriteDenial(pid, of: h.key) { return true }
                if pid <= 0 { return false }   // unknown process: held until the deadline
                // The exec failed (ENOEXEC, a missing interpreter, …): no thread is inside execve any more, and none
                // runs the file. Checked after the executable, so an exec that succeeds in between is past the
                // write denial either way. Without this a failed exec held writers off for the lease-break time.
                // Only once an exec has had 10 ms: a successful one is seen by its executable well before, and
                // reading every thread's syscall costs the very execs this guards (measured: +37 µs per exec).
                return now - h.since >= 0.01 && !Self.anyThreadInExec(of: pid)
            }
            if passed && adopt(h) {
                continue
            } else if passed || now >= h.deadline {
                done.append(h)
            } else {
                h.interval = min(0.02, h.interval * 2)
                h.nextCheck = now + h.interval
                again.append(h)
            }
        }
        if !again.isEmpty { held.withLock { $0.append(contentsOf: again) } }
        for h in done {
            h.descriptor.releaseLease()
            h.descriptor.close()
        }
    }
}
