import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why the daemon could not start. One line.
public struct DaemonStartError: Error, CustomStringConvertible {
    public var description: String
}

/// The identity of a file's content as far as the kernel can tell without reading it: a write
/// (through `write()` or a shared mapping) changes ctime, and a restored mtime does not hide it.
struct FileKey: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
    var changeTime: Int64
    var size: Int64
    /// fs-verity is enabled (statx): the content cannot change while the inode lives.
    var isVerity = false
    /// Owned by root and writable by nobody else (mode, and so the ACL mask, without group/other
    /// write): only such files may get a kernel-side verdict, which a write through a shared
    /// mapping would not clear.
    var onlyRootCanWrite = false

    init(_ id: FileIdentity) {
        device = id.device; inode = id.inode; changeTime = id.changeTimeNanoseconds; size = id.size
        onlyRootCanWrite = id.owner == 0 && id.mode & 0o022 == 0 && id.isRegularFile
        isVerity = id.isVerity
    }

    /// `fstat` of the descriptor; nil when it fails.
    static func of(_ fd: Int32) -> FileKey? {
        (try? FileDescriptor(rawValue: fd).identity()).map(FileKey.init)
    }
}

/// A permission event waiting for its file to be hashed.
struct PendingEvent: Sendable {
    var event: FanotifyEvent
    var key: FileKey
    var receivedAt: UInt64
}

/// The enforcement daemon: answers every exec permission event on the marked filesystems from
/// the signed inventory.
///
/// Threads: the event loop (reads events, answers cache hits at once, queues misses), hash
/// workers (hash misses from the event's own descriptor, answer every event waiting on that file),
/// the control socket, the event-log writer, and the main thread (signals, mount changes, learn
/// flushes). A slow hash never delays an answer that the cache can give.
public final class Daemon: Sendable {
    public let configuration: DaemonConfiguration
    let group: FanotifyGroup
    /// Counts every exec on the marked filesystems, so that `status` can say how many the kernel answered
    /// (nil if the kernel refused the group). Marked where the permission group is; filesystems that cannot
    /// report file handles are not counted (listed in `execCountGaps`).
    let execCounter: FanotifyGroup?
    let execCountGaps = Mutex<Set<String>>([])
    let policy: PolicyState
    let statistics = Statistics()
    let eventLog: EventLog
    let learned: LearnRecorder
    let ownPID = getpid()
    let startedAt = monotonicSeconds()
    let stopping = Atomic<Bool>(false)
    let ready = Atomic<Bool>(false)
    let shutdownNotifier: EventNotifier
    let eventLoopFinished = DispatchSemaphore(value: 0)
    let confined = Atomic<Bool>(false)
    let serviceNotifier = ServiceNotifier()
    /// Sysctls raised while enforcing: vm.memfd_noexec (fanotify cannot see memfds) and
    /// user.max_user_namespaces (fanotify cannot see a filesystem mounted in a namespace it has never seen).
    let sysctlGuards: [SysctlGuard]

    /// What the daemon still needs once running (see README, "Confinement").
    static let keptCapabilities: [Confinement.Capability] = [.sysAdmin, .sysPtrace, .dacOverride, .dacReadSearch]

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
        "read", "write", "pread64", "readv", "writev", "openat", "open", "close", "fstat", "newfstatat", "stat", "lstat",
        "statx", "lseek", "fcntl", "ioctl", "readlink", "readlinkat", "getdents64", "fsync", "fdatasync", "fadvise64",
        "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat", "chmod", "fchmod",
        "fchmodat", "fstatfs", "statfs", "uname", "getcwd", "access", "faccessat", "faccessat2", "getuid", "geteuid",
        "getgid", "getegid",
        // event loop, signals, control socket (already listening), systemd notification (socket already open)
        "poll", "ppoll", "eventfd2", "signalfd4", "accept", "accept4", "setsockopt", "getsockopt", "sendto", "recvfrom",
        "shutdown", "fanotify_mark",
    ]

    /// File identity → digest. Decisions are not cached, only digests: a reload or mode switch
    /// takes effect on the very next event without flushing anything.
    let digestCache = Mutex<[FileKey: SHA256Digest]>([:])
    /// Bounds on the userspace caches (about 80 and 64 bytes an entry): past them a cache is emptied
    /// and refills from the next events. Files only root can write stay in the kernel-side cache.
    static let digestCacheLimit = 65_536
    static let contentClassCacheLimit = 16_384
    /// Digest of the content each file had at its last exec, for recognising interpreters only. Sound for
    /// files anyone can write because a file being executed can be neither opened for writing nor mapped
    /// shared-writable (ETXTBSY): a running process's executable is the content its exec was decided on,
    /// and every exec refreshes the entry.
    let execDigests = Mutex<[FileKey: SHA256Digest]>([:])
    /// Files being hashed → every event waiting for that hash.
    let pending = Mutex<[FileKey: [PendingEvent]]>([:])
    let jobs = Mutex<[FileKey]>([])
    let jobsAvailable = DispatchSemaphore(value: 0)
    /// Marked superblocks ("major:minor") → mount point used to mark them.
    let marked = Mutex<[String: String]>([:])
    let markFailures = Mutex<[String]>([])
    /// Superblocks mounted only in other mount namespaces (containers' private tmpfs, …) → where they were
    /// marked. Refreshed by every scan of /proc.
    let markedInOtherNamespaces = Mutex<[String: String]>([:])
    /// How often other mount namespaces are looked for (the window in which a filesystem a container mounts
    /// is not yet marked; a mount in the daemon's own namespace is seen at once through mountinfo's POLLPRI).
    static let namespaceScanSeconds = 2.0

    /// Exec events always; open events unless `open-events = no` (they close the loader, library
    /// and interpreter bypasses, see Policies/INTERPRETERS.md).
    var watchedEvents: FanotifyGroup.Events {
        var events: FanotifyGroup.Events = configuration.openEvents ? [.openExecPermission, .openPermission] : [.openExecPermission]
        if configuration.prehash { events.insert(.closeWrite) }
        return events
    }
    /// Descriptors of freshly written files waiting to be pre-hashed (bounded: a full queue drops,
    /// and the first exec hashes on demand as it would anyway).
    let prehashQueue = Mutex<[(fd: Int32, closedAt: UInt64)]>([])
    /// Installers set the mode and times right after closing (tar, install): wait this long (50 ms) after the
    /// close before hashing, so the digest is stored under the file's final (ctime, size) key.
    static let prehashSettleNanoseconds: UInt64 = 50_000_000
    let prehashAvailable = DispatchSemaphore(value: 0)
    static let prehashQueueLimit = 256
    /// Rebuilt on every reload, so an upgraded interpreter is recognised by its new content.
    let interpreters: Mutex<InterpreterRule>
    /// File identity → content class, so an open of a file seen before costs one fstat and one lookup.
    let contentClasses = Mutex<[FileKey: ContentClass]>([:])
    /// The kernel follows every exec permission event with an open permission event for the same
    /// file (fsnotify_open_perm). That second event repeats the decision silently instead of
    /// counting and logging the same exec twice. Only for files only root can write: reusing the exec's
    /// digest for anyone else's file as well would save its second hash (-50 µs median per exec), but
    /// measured side by side it raised the p99 of such execs under a CPU-bound load from 1-2 ms to 4 ms
    /// (tools/bench hol), whichever thread answered; so those files are hashed for both events.
    let lastExec = Mutex<[Int32: FileKey]>([:])

    public init(configuration: DaemonConfiguration, hostname: String) throws(DaemonStartError) {
        keepLargeAllocationsOutOfTheHeap()   // before the policy is loaded: it is the largest allocation
        self.configuration = configuration
        policy = PolicyState(mode: configuration.mode, stateDirectory: configuration.stateDirectory, hostname: hostname)
        eventLog = EventLog(path: configuration.eventsPath, statistics: statistics)
        learned = LearnRecorder(hostname: hostname)
        interpreters = Mutex(InterpreterRule(configured: configuration.interpreters))
        var guards: [SysctlGuard] = []
        if configuration.memfdNoexec {
            guards.append(SysctlGuard(name: "vm.memfd_noexec", enforcedValue: "2", stateDirectory: configuration.stateDirectory,
                                      why: "executable memfds refused while enforcing"))
        }
        if configuration.usernsRestrict {
            guards.append(SysctlGuard(name: "user.max_user_namespaces", enforcedValue: "0", stateDirectory: configuration.stateDirectory,
                                      why: "no new user namespaces, so no unmarked filesystems mounted in them, while enforcing"))
        }
        sysctlGuards = guards
        do {
            group = try FanotifyGroup.create()
            shutdownNotifier = try EventNotifier()
            execCounter = configuration.countExecs ? try? FanotifyGroup.createCounter() : nil
        } catch {
            throw DaemonStartError(description: "cannot create the fanotify group: \(error) (appctl daemon must run as root, on a kernel with CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")
        }
    }

    // MARK: - Life cycle

    /// Runs until SIGTERM or SIGINT. Returns the process exit code.
    public func run(signals: SignalReceiver, control: ControlServer?) -> Int32 {
        let mountinfo = try? FileDescriptor.open("/proc/self/mountinfo", [.readOnly])
        raiseDescriptorLimit()
        applyHardening(for: policy.mode)
        // From the first mark until the event thread runs, nothing may open a file on a marked
        // filesystem (nobody would answer): marking, confining and starting threads open nothing.
        updateMarks(mountinfo: mountinfo)
        // Threads started below inherit this: on a busy machine the thread that answers must get a CPU
        // before the programs it holds up (measured: p99 of cached execs under a 2-core load). The hash
        // workers lower themselves again. Needs CAP_SYS_NICE, so before confinement drops it.
        setThreadNice(-10)
        if configuration.confine {
            do {
                try Confinement.apply(keeping: Self.keptCapabilities, allowedSyscalls: Self.allowedSyscalls)
                confined.store(true, ordering: .relaxed)
            } catch {
                log("appctl: WARNING: running unconfined: \(error)")
            }
        }
        // Threads start after confinement, so they inherit the reduced capabilities.
        eventLog.start()
        for i in 0..<configuration.hashThreads {
            startThread(name: "appctl-hash-\(i)") { [self] in hashWorker() }
        }
        startThread(name: "appctl-events") { [self] in eventLoop() }
        if configuration.prehash { startThread(name: "appctl-prehash") { [self] in prehashWorker() } }
        control?.start(daemon: self)
        // Other namespaces' filesystems: after the event thread runs (the scan reads /proc only, but opening
        // anything on a marked filesystem with nobody answering would wait for ever).
        updateMarksInOtherNamespaces()
        var nextNamespaceScan = monotonicSeconds() + Self.namespaceScanSeconds

        releaseFreeHeapMemory()
        ready.store(true, ordering: .releasing)
        serviceNotifier.notify("READY=1\nSTATUS=enforcing \(policy.mode.rawValue)")
        log("appctl: ready, mode \(policy.mode.rawValue), \(marked.withLock { $0.count }) filesystems marked")

        var nextLearnFlush = monotonicSeconds() + Double(configuration.learnFlushSeconds)
        var nextMetrics = monotonicSeconds()
        var nextExpiryCheck = monotonicSeconds()
        var expiryReported = false
        var exitCode: Int32 = 0
        loop: while true {
            var entries: [(FileDescriptor, Int16)] = [(signals.descriptor, Int16(POLLIN))]
            if let mountinfo { entries.append((mountinfo, Int16(POLLPRI))) }
            let revents = (try? pollDescriptors(entries, timeoutMilliseconds: 1000)) ?? []
            if revents.count > 1, revents[1] & Int16(POLLPRI | POLLERR) != 0 {
                updateMarks(mountinfo: mountinfo)
                nextNamespaceScan = 0   // a mount in our namespace often comes with mounts in new ones (containers)
            }
            drainExecCounter()
            if monotonicSeconds() >= nextNamespaceScan {
                updateMarksInOtherNamespaces()
                nextNamespaceScan = monotonicSeconds() + Self.namespaceScanSeconds
            }
            while let signal = signals.next() {
                switch signal {
                case SIGHUP:
                    reload(reason: "SIGHUP")
                    eventLog.reopen()
                case SIGTERM, SIGINT:
                    break loop
                default:
                    break
                }
            }
            if let metricsFile = configuration.metricsFile, monotonicSeconds() >= nextMetrics {
                writeMetrics(to: metricsFile)
                nextMetrics = monotonicSeconds() + 15
            }
            if monotonicSeconds() >= nextExpiryCheck {
                nextExpiryCheck = monotonicSeconds() + 60
                if let expires = policy.snapshot.policy?.expires, expires <= .now, !expiryReported {
                    expiryReported = true
                    // Keep enforcing it: dropping to no policy would open the machine. Say so, loudly.
                    log("appctl: WARNING: the policy in force expired at \(expires); still enforcing it — sign and reload a new one")
                }
            }
            if monotonicSeconds() >= nextLearnFlush {
                flushLearned()
                nextLearnFlush = monotonicSeconds() + Double(configuration.learnFlushSeconds)
            }
            if stopping.load(ordering: .relaxed) { exitCode = 1; break }
        }
        shutdown()
        return exitCode
    }

    /// Answers everything pending, writes the learn fragment and the event log; the group closes with the
    /// process (the kernel allows what may still arrive).
    func shutdown() {
        stopping.store(true, ordering: .relaxed)
        shutdownNotifier.signal()
        _ = eventLoopFinished.wait(timeout: .now() + 5)
        for _ in 0..<configuration.hashThreads { jobsAvailable.signal() }
        prehashAvailable.signal()
        prehashQueue.withLock { $0.removeAll() }
        // Events still waiting for a hash: answer them now rather than leave them to the exit. Their
        // descriptors, and the group's, stay open until the process exits: a worker still hashing must not
        // read, nor answer through, a descriptor number that a file opened below could have taken over.
        let waiting = pending.withLock { p -> [PendingEvent] in
            let all = p.values.flatMap { $0 }
            p.removeAll()
            return all
        }
        for p in waiting { reply(p.event.fd, allow: true) }
        applyHardening(for: .monitor)   // restore what enforcing changed
        flushLearned()
        eventLog.stop()
        log("appctl: stopped")
    }

    /// Machine-wide hardening that holds only while enforcing (see `SysctlGuard`).
    func applyHardening(for mode: Mode) {
        for guardian in sysctlGuards {
            if mode == .enforce { guardian.engage(log: log) } else { guardian.release(log: log) }
        }
    }

    @discardableResult
    public func reload(reason: String) -> Result<PolicyHeader, PolicyRefusal> {
        guard let path = configuration.policyPath, let key = configuration.publicKeyPath else {
            return .failure(PolicyRefusal("no policy or key configured"))
        }
        let result = policy.apply(path: path, keyPath: key, allowRollback: configuration.allowRollback)
        if case .success = result {
            flushKernelCache(reason: reason)
            releaseFreeHeapMemory()   // the previous policy's arrays and the reader's buffers
            if ready.load(ordering: .relaxed) {
                // Interpreters may have been upgraded since start-up (the files are read here, off the event thread).
                let rebuilt = InterpreterRule(configured: configuration.interpreters)
                interpreters.withLock { $0 = rebuilt }
            }
        }
        switch result {
        case .success(let header): log("appctl: \(reason): applied policy serial \(header.serial!) (\(header.allowCount) allow, \(header.denyCount) deny)")
        case .failure(let refusal): log("appctl: \(reason): policy NOT applied, keeping the current one: \(refusal)")
        }
        return result
    }

    func flushLearned() {
        guard learned.isDirty else { return }
        do { try learned.write(to: configuration.learnOutput) } catch {
            log("appctl: cannot write the learned fragment: \(error)")
        }
    }

    // MARK: - Marks

    func updateMarks(mountinfo: FileDescriptor?) {
        guard let mountinfo else { return }
        var text = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: Int64 = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { (try? mountinfo.read(into: $0, at: offset)) ?? 0 }
            if n <= 0 { break }
            text += buffer[0..<n]
            offset += Int64(n)
        }
        let mounts = MountTable.parse(String(decoding: text, as: UTF8.self))
        let wanted = MountTable.selectMarkable(mounts, paths: configuration.paths,
                                               excludedTypes: configuration.excludedFilesystemTypes,
                                               excludedMountPoints: configuration.excludedMountPoints)
        let present = Set(mounts.map(\.device))
        var added: [String] = []
        var failed: [String] = []
        marked.withLock { marked in
            // Unmounted filesystems: the kernel dropped their marks with the superblock.
            for device in marked.keys where !present.contains(device) { marked.removeValue(forKey: device) }
            // Every wanted filesystem is marked again on every change (adding a mark is idempotent): a device
            // number reused by a new superblock, or a mark that went astray, is put right.
            for m in wanted {
                do {
                    if try group.markVerifiedFilesystem(mountPoint: m.mountPoint, mountID: m.mountID, device: m.device, events: watchedEvents) {
                        if marked[m.device] == nil { added.append("\(m.mountPoint) (\(m.filesystemType))") }
                        marked[m.device] = m.mountPoint
                        markExecCounter(mountPoint: m.mountPoint, mountID: m.mountID, device: m.device)
                    } else {
                        failed.append("\(m.mountPoint) (\(m.filesystemType)): the path no longer leads to mount \(m.mountID) (device \(m.device))")
                    }
                } catch {
                    failed.append("\(m.mountPoint) (\(m.filesystemType)): \(error)")
                }
            }
        }
        markFailures.withLock { $0 = failed }
        for a in added where ready.load(ordering: .relaxed) { log("appctl: marked new filesystem \(a)") }
        for f in failed { log("appctl: cannot mark \(f)") }
    }

    /// Marks the filesystems mounted only inside other mount namespaces: each namespace's mount table is read
    /// from /proc/PID/mountinfo of one of its processes and its mounts reached through /proc/PID/root, each
    /// checked by mount id as in our own namespace (a path that leads elsewhere is not marked; a mark placed on
    /// the wrong superblock could only add coverage). `--path` applies to mount points as named inside each
    /// namespace. Superblocks already marked through our own mount table are skipped.
    func updateMarksInOtherNamespaces() {
        let ownDevices = marked.withLock { Set($0.keys) }
        var present: [String: String] = [:]
        for (namespace, pid) in MountNamespaces.others() {
            guard let bytes = try? readSmallFile("/proc/\(pid)/mountinfo", limit: 16 << 20) else { continue }
            let mounts = MountTable.parse(String(decoding: bytes, as: UTF8.self))
            let wanted = MountTable.selectMarkable(mounts, paths: configuration.paths,
                                                   excludedTypes: configuration.excludedFilesystemTypes,
                                                   excludedMountPoints: configuration.excludedMountPoints)
            for m in wanted where !ownDevices.contains(m.device) && present[m.device] == nil {
                // "/." and not "/": /proc/PID/root itself is a magic link, which O_NOFOLLOW would refuse.
                let path = "/proc/\(pid)/root" + (m.mountPoint == "/" ? "/." : m.mountPoint)
                if (try? group.markVerifiedFilesystem(mountPoint: path, mountID: m.mountID, device: m.device, events: watchedEvents)) == true {
                    present[m.device] = "\(m.mountPoint) (\(m.filesystemType)) in \(namespace), pid \(pid)"
                    markExecCounter(mountPoint: path, mountID: m.mountID, device: m.device)
                }
            }
        }
        let previous = markedInOtherNamespaces.withLock { old -> [String: String] in
            defer { old = present }
            return old
        }
        if ready.load(ordering: .relaxed) {
            for (device, where_) in present where previous[device] == nil { log("appctl: marked a filesystem of another mount namespace: \(where_)") }
        }
    }

    /// Marks a filesystem for the exec counter too. A filesystem without file handles (FAN_REPORT_FID needs
    /// them) is not counted, and `status` says so instead of under-reporting silently.
    func markExecCounter(mountPoint: String, mountID: UInt64, device: String) {
        guard let execCounter else { return }
        let counted = (try? execCounter.markVerifiedFilesystem(mountPoint: mountPoint, mountID: mountID, device: device, events: [.openExec])) == true
        execCountGaps.withLock { gaps in
            if counted { gaps.remove(device) } else { gaps.insert(device) }
        }
    }

    /// Marked filesystems whose execs the counter cannot see (no file handles): their execs are in neither
    /// `execs_seen` nor `execs_answered_in_kernel`.
    func uncountedMountPoints() -> [String] {
        let gaps = execCountGaps.withLock { $0 }
        let own = marked.withLock { $0 }, others = markedInOtherNamespaces.withLock { $0 }
        return gaps.compactMap { own[$0] ?? others[$0] }.sorted()
    }

    /// Adds the execs the counting group saw since the last call (main thread once a second, and `status`).
    func drainExecCounter() {
        guard let execCounter else { return }
        let (count, overflowed) = execCounter.drainCount(of: .openExec)
        statistics.execsSeen.wrappingAdd(count, ordering: .relaxed)
        if overflowed { statistics.execCountOverflows.wrappingAdd(1, ordering: .relaxed) }
    }

    // MARK: - Event loop

    func eventLoop() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
        defer { buffer.deallocate(); eventLoopFinished.signal() }
        while !stopping.load(ordering: .relaxed) {
            let revents = (try? pollDescriptors([(group.descriptor, Int16(POLLIN)), (shutdownNotifier.descriptor, Int16(POLLIN))],
                                                timeoutMilliseconds: -1)) ?? [0, 0]
            if revents[0] & Int16(POLLIN) != 0 {
                guard let events = try? group.readEvents(into: buffer) else { continue }
                for event in events { handle(event) }
            }
        }
        // Answer what arrived before the stop was noticed.
        while let events = try? group.readEvents(into: buffer), !events.isEmpty {
            for event in events { handle(event, shuttingDown: true) }
        }
    }

    func handle(_ event: FanotifyEvent, shuttingDown: Bool = false) {
        guard event.fd >= 0 else { return }   // FAN_NOFD: a queue overflow notice
        guard event.isPermissionEvent else {
            if event.isCloseWrite && event.pid != ownPID && !shuttingDown {
                let queued = prehashQueue.withLock { q -> Bool in
                    guard q.count < Self.prehashQueueLimit else { return false }
                    q.append((event.fd, monotonicNanoseconds()))
                    return true
                }
                if queued { prehashAvailable.signal(); return }
                statistics.prehashDropped.wrappingAdd(1, ordering: .relaxed)
            }
            Glibc.close(event.fd)
            return
        }
        let receivedAt = monotonicNanoseconds()
        if event.pid == ownPID {
            // Never wait on ourselves.
            statistics.ownProcessEvents.wrappingAdd(1, ordering: .relaxed)
            answer(event, Decision(allow: true, reason: .ownProcess), digest: nil, key: nil, receivedAt: receivedAt)
            return
        }
        guard let key = FileKey.of(event.fd) else {
            answer(event, Decision.unreadable(mode: policy.mode), digest: nil, key: nil, receivedAt: receivedAt)
            return
        }
        let isExec = event.mask & FanotifyGroup.Events.openExecPermission.rawValue != 0
        if isExec {
            lastExec.withLock { recent in
                if recent.count > 4096 { recent.removeAll(keepingCapacity: true) }
                recent[event.pid] = key
            }
        } else if key.onlyRootCanWrite, lastExec.withLock({ $0[event.pid] == key ? $0.removeValue(forKey: event.pid) : nil }) != nil,
                  let digest = digestCache.withLock({ $0[key] }) {
            // The open that completes an exec just decided: same answer, not counted again.
            reply(event.fd, allow: policy.decide(digest).0.allow)
            Glibc.close(event.fd)
            return
        }
        if !isExec, case (false, let cls) = isProgramOpen(event, key) {
            // A plain open of data: allowed at once, no hashing, no logging.
            statistics.inertOpens.wrappingAdd(1, ordering: .relaxed)
            reply(event.fd, allow: true)
            if configuration.kernelCache && key.onlyRootCanWrite && cls == .other {
                // Later opens of this unchanged root-owned data file stay in the kernel.
                placeIgnoreMark(event.fd, [.openPermission])
            }
            Glibc.close(event.fd)
            return
        }
        // Only files that only root can write are cached: a write through a shared mapping to a page that
        // is already dirty changes content without changing ctime, so anyone else's file is hashed every time.
        if key.onlyRootCanWrite, let digest = digestCache.withLock({ $0[key] }) {
            if isExec { rememberExec(key, digest) }
            statistics.cacheHits.wrappingAdd(1, ordering: .relaxed)
            let (decision, _, _) = policy.decide(digest)
            answer(event, decision, digest: digest, key: key, receivedAt: receivedAt)
            return
        }
        if shuttingDown {
            answer(event, Decision(allow: true, reason: .unknown), digest: nil, key: key, receivedAt: receivedAt)
            return
        }
        if key.isVerity, policy.usesVerity, let verity = FileDescriptor(rawValue: event.fd).verityDigestIfAny,
           let digest = policy.contentDigest(forVerity: verity) {
            // fs-verity: the kernel measured the file in O(1) and checks every page read against that
            // measurement; a verity file can never be opened for writing, so whoever owns it, its verdict may
            // stay in the kernel. The content digest the signed policy pairs with it still meets the blocklist.
            // (The statx attribute costs nothing: it comes with the identity every event takes. Only then is
            // the filesystem type checked and the file measured, see `verityDigest()`.) The pairing is the
            // policy's, not a measurement, so it does not go into the digest cache, which outlives reloads.
            statistics.verityDecisions.wrappingAdd(1, ordering: .relaxed)
            if isExec { rememberExec(key, digest) }
            answer(event, policy.decide(digest).0, digest: digest, key: key, receivedAt: receivedAt, contentIsSealed: true)
            // A reload between the lookup and the mark that dropped the pairing: drop the mark too.
            if policy.contentDigest(forVerity: verity) != digest { flushKernelCache(reason: "verity pairing revoked while marking") }
            return
        }
        statistics.cacheMisses.wrappingAdd(1, ordering: .relaxed)
        if policy.mode == .enforce && !policy.mayAllow(size: key.size) {
            // No allowed entry has this size, so no digest could match: deny without reading a byte
            // (an 8 TiB sparse file must not keep the hash workers busy for hours).
            statistics.deniedBySize.wrappingAdd(1, ordering: .relaxed)
            answer(event, Decision.decide(.unknown, mode: .enforce), digest: nil, key: key, receivedAt: receivedAt)
            return
        }
        let isNewJob = pending.withLock { p -> Bool in
            let isNew = p[key] == nil
            p[key, default: []].append(PendingEvent(event: event, key: key, receivedAt: receivedAt))
            return isNew
        }
        if isNewJob {
            jobs.withLock { $0.append(key) }
            jobsAvailable.signal()
        }
    }

    /// Writes the answer for one permission event; a failure is logged (the kernel allows on close anyway).
    func reply(_ eventDescriptor: Int32, allow: Bool) {
        do { try group.respond(to: eventDescriptor, allow ? .allow : .deny) } catch {
            log("appctl: cannot answer an event: \(error)")
        }
    }

    func placeIgnoreMark(_ fd: Int32, _ events: FanotifyGroup.Events) {
        do {
            try group.ignoreInode(of: fd, events: events.intersection(watchedEvents))
            statistics.ignoreMarksPlaced.wrappingAdd(1, ordering: .relaxed)
            statistics.ignoreMarksSinceFlush.wrappingAdd(1, ordering: .relaxed)
        } catch {
            statistics.ignoreMarkErrors.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// Drops every kernel-side verdict: after a reload or mode change, everything is asked again.
    func flushKernelCache(reason: String) {
        guard configuration.kernelCache else { return }
        do {
            try group.flushInodeMarks()
            statistics.ignoreMarksSinceFlush.store(0, ordering: .relaxed)
            statistics.kernelCacheFlushes.wrappingAdd(1, ordering: .relaxed)
        } catch {
            log("appctl: cannot flush the kernel verdict cache (\(reason)): \(error)")
        }
    }

    /// Whether a plain open (not an exec) needs a decision: an ELF object (whoever opens it may map
    /// it as code), or a script an interpreter opens as its program.
    func isProgramOpen(_ event: FanotifyEvent, _ key: FileKey) -> (Bool, ContentClass) {
        let cls: ContentClass
        if key.onlyRootCanWrite, let cached = contentClasses.withLock({ $0[key] }) {
            cls = cached
        } else {
            cls = contentClass(of: event.fd)
            // A data file that gets a kernel-side verdict below is never asked about again while unchanged.
            if key.onlyRootCanWrite && !(cls == .other && configuration.kernelCache) {
                contentClasses.withLock { cache in
                    if cache.count >= Self.contentClassCacheLimit { cache.removeAll(keepingCapacity: true) }
                    cache[key] = cls
                }
            }
        }
        switch cls {
        case .elf:
            return (true, cls)
        case .shebang, .other:
            let rule = interpreters.withLock { $0 }
            guard let family = rule.interpreterFamily(pid: event.pid, digestOf: { k in execDigests.withLock { $0[k] } ?? digestCache.withLock { $0[k] } }) else {
                return (false, cls)
            }
            return (cls == .shebang || rule.opensAsProgram(pid: event.pid, family: family, device: key.device, inode: key.inode,
                                                            openedPath: pathOfDescriptor(event.fd)), cls)
        }
    }

    /// Caches a digest for a file only root can write (callers check), bounded like every cache here.
    func rememberDigest(_ digest: SHA256Digest, for key: FileKey) {
        digestCache.withLock { cache in
            if cache.count >= Self.digestCacheLimit { cache.removeAll(keepingCapacity: true) }
            cache[key] = digest
        }
    }

    func rememberExec(_ key: FileKey, _ digest: SHA256Digest) {
        execDigests.withLock { recent in
            if recent.count >= Self.contentClassCacheLimit { recent.removeAll(keepingCapacity: true) }
            recent[key] = digest
        }
    }

    // MARK: - Hashing

    func hashWorker() {
        // Below the event thread (nice -10), level with ordinary programs: a long hash must not delay the
        // answers the cache gives at once, and the execs waiting for a hash must not starve behind a busy CPU.
        lowerThreadPriority(nice: 0)
        let hasher = FileHasher()
        while true {
            jobsAvailable.wait()
            if stopping.load(ordering: .relaxed) { return }
            guard let key = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            guard let first = pending.withLock({ $0[key]?.first }) else { continue }
            statistics.hashesInFlight.wrappingAdd(1, ordering: .relaxed)
            let digest: SHA256Digest?
            do {
                let result = try hasher.hash(FileDescriptor(rawValue: first.event.fd), sizeHint: key.size)
                statistics.hashesComputed.wrappingAdd(1, ordering: .relaxed)
                statistics.bytesHashed.wrappingAdd(Int(result.bytesRead), ordering: .relaxed)
                // Cache only what was hashed whole and unchanged meanwhile, and only root can change.
                if key.onlyRootCanWrite, FileKey.of(first.event.fd) == key, result.bytesRead == key.size {
                    rememberDigest(result.sha256, for: key)
                }
                digest = result.sha256
            } catch {
                digest = nil
            }
            statistics.hashesInFlight.wrappingAdd(-1, ordering: .relaxed)
            let waiters = pending.withLock { $0.removeValue(forKey: key) ?? [] }
            for waiter in waiters {
                if let digest, waiter.event.mask & FanotifyGroup.Events.openExecPermission.rawValue != 0 {
                    rememberExec(key, digest)
                }
                if let digest {
                    let (decision, _, _) = policy.decide(digest)
                    answer(waiter.event, decision, digest: digest, key: key, receivedAt: waiter.receivedAt)
                } else {
                    answer(waiter.event, Decision.unreadable(mode: policy.mode), digest: nil, key: key, receivedAt: waiter.receivedAt)
                }
            }
        }
    }

    /// Hashes freshly written files that hold executable content (ELF, `#!`, an execute bit) at the
    /// lowest priority. The digest goes into the same cache as any other, keyed by (dev, ino, ctime,
    /// size): if the file changes again before it runs, the key no longer matches and the exec hashes.
    func prehashWorker() {
        lowerThreadPriority(nice: 19)
        let hasher = FileHasher()
        while true {
            prehashAvailable.wait()
            guard let (fd, closedAt) = prehashQueue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
                if stopping.load(ordering: .relaxed) { return }
                continue
            }
            defer { Glibc.close(fd) }
            if stopping.load(ordering: .relaxed) { continue }
            let settled = closedAt + Self.prehashSettleNanoseconds
            let now = monotonicNanoseconds()
            if now < settled { usleep(UInt32((settled - now) / 1000)) }
            guard let key = FileKey.of(fd), key.onlyRootCanWrite, digestCache.withLock({ $0[key] }) == nil,
                  let st = try? FileDescriptor(rawValue: fd).status() else { continue }
            guard contentClass(of: fd) != .other || st.isExecutableByMode else { continue }
            guard let result = try? hasher.hash(FileDescriptor(rawValue: fd), sizeHint: key.size),
                  FileKey.of(fd) == key, result.bytesRead == key.size else { continue }
            rememberDigest(result.sha256, for: key)
            statistics.prehashed.wrappingAdd(1, ordering: .relaxed)
            statistics.bytesHashed.wrappingAdd(Int(result.bytesRead), ordering: .relaxed)
        }
    }

    // MARK: - Answering

    /// Answers the event and records it. For denies, would-denies and learned files the process
    /// details are read from /proc *before* answering: the process is blocked in execve then, so
    /// what we read is certainly it (a denied child often exits within microseconds of the answer).
    /// Allows, the hot path, are answered at once; a logged allow reads /proc afterwards.
    /// `contentIsSealed`: the file has fs-verity, so its content cannot change while the inode lives.
    func answer(_ event: FanotifyEvent, _ decision: Decision, digest: SHA256Digest?, key: FileKey?, receivedAt: UInt64,
                contentIsSealed: Bool = false) {
        let label: String?
        if !decision.allow { label = "deny" }
        else if decision.wouldDeny { label = "would-deny" }
        else if decision.record, let digest {
            // Learn mode: record each new file once (not every exec of it).
            label = learned.record(digest: digest, size: key?.size ?? 0, fd: event.fd) ? "learned" : nil
        }
        else { label = configuration.logAllows && decision.reason != .ownProcess ? "allow" : nil }
        let notable = label != nil && label != "allow"
        let process = notable ? ProcessInfo(pid: event.pid) : nil
        let path = notable ? pathOfDescriptor(event.fd) : nil

        // Latency ends when the answer is ready: the write that follows can hand the CPU straight to
        // the woken process, which is not time the decision took.
        statistics.recordLatency(nanoseconds: monotonicNanoseconds() &- receivedAt)
        reply(event.fd, allow: decision.allow)
        if decision.allow, decision.reason == .known, configuration.kernelCache, let key, key.onlyRootCanWrite || contentIsSealed,
           let digest {
            // Known content that only root can change (or nobody can: fs-verity): later execs and opens stay in the kernel.
            placeIgnoreMark(event.fd, [.openExecPermission, .openPermission])
            // A reload between the decision and the mark would have flushed before the mark existed:
            // if the policy now in force no longer allows this content, flush again.
            if !policy.decide(digest).0.allow { flushKernelCache(reason: "revoked while marking") }
        }
        if decision.allow { statistics.allowed.wrappingAdd(1, ordering: .relaxed) } else { statistics.denied.wrappingAdd(1, ordering: .relaxed) }
        if decision.allow, event.mask & FanotifyGroup.Events.openExecPermission.rawValue != 0 {
            statistics.execsAllowedByDaemon.wrappingAdd(1, ordering: .relaxed)
        }
        if decision.wouldDeny { statistics.wouldDeny.wrappingAdd(1, ordering: .relaxed) }
        if let label {
            let (_, serial, mode) = digest.map { policy.decide($0) } ?? (decision, policy.snapshot.policy?.serial, policy.mode)
            eventLog.submit(EventRecord(
                time: rfc3339Now(), decision: label, reason: decision.reason, path: path ?? pathOfDescriptor(event.fd),
                digest: digest, size: key?.size ?? -1, device: key?.device ?? 0, inode: key?.inode ?? 0,
                pid: event.pid, process: process ?? ProcessInfo(pid: event.pid), serial: serial, mode: mode))
        }
        Glibc.close(event.fd)
    }

    // MARK: - Status

    /// The Prometheus text exposition format, for node_exporter's textfile collector (written whole,
    /// atomically, so the collector never reads half a file).
    public func metricsText() -> String {
        let s = policy.snapshot
        func counter(_ name: String, _ help: String, _ value: Int, _ labels: String = "") -> String {
            "# HELP appctl_\(name) \(help)\n# TYPE appctl_\(name) counter\nappctl_\(name)\(labels) \(value)\n"
        }
        func gauge(_ name: String, _ help: String, _ lines: [(String, String)]) -> String {
            "# HELP appctl_\(name) \(help)\n# TYPE appctl_\(name) gauge\n" + lines.map { "appctl_\(name)\($0.0) \($0.1)\n" }.joined()
        }
        let st = statistics
        var text = ""
        text += "# HELP appctl_decisions_total Permission events answered by the daemon, by outcome.\n# TYPE appctl_decisions_total counter\n"
        text += "appctl_decisions_total{decision=\"allow\"} \(st.allowed.load(ordering: .relaxed))\n"
        text += "appctl_decisions_total{decision=\"deny\"} \(st.denied.load(ordering: .relaxed))\n"
        text += "appctl_decisions_total{decision=\"would_deny\"} \(st.wouldDeny.load(ordering: .relaxed))\n"
        text += counter("cache_hits_total", "Events answered from the userspace digest cache.", st.cacheHits.load(ordering: .relaxed))
        text += counter("cache_misses_total", "Events that needed a hash.", st.cacheMisses.load(ordering: .relaxed))
        text += counter("inert_opens_total", "Plain opens of data answered without hashing.", st.inertOpens.load(ordering: .relaxed))
        text += counter("hashes_total", "Files hashed.", st.hashesComputed.load(ordering: .relaxed))
        text += counter("hashed_bytes_total", "Bytes hashed.", st.bytesHashed.load(ordering: .relaxed))
        text += counter("ignore_marks_total", "Kernel-side verdicts placed (ignore marks).", st.ignoreMarksPlaced.load(ordering: .relaxed))
        text += counter("kernel_cache_flushes_total", "Flushes of the kernel-side verdicts.", st.kernelCacheFlushes.load(ordering: .relaxed))
        text += gauge("kernel_cached_files_at_most", "Kernel-side verdicts placed since the last flush (evicted inodes drop theirs).",
                      [("", String(st.ignoreMarksSinceFlush.load(ordering: .relaxed)))])
        if execCounter != nil {
            text += counter("execs_total", "Execs on the marked filesystems (counted after they happened).", st.execsSeen.load(ordering: .relaxed))
        }
        text += counter("execs_allowed_by_daemon_total", "Exec permission events the daemon allowed (the rest were answered in the kernel).",
                        st.execsAllowedByDaemon.load(ordering: .relaxed))
        text += counter("verity_decisions_total", "Events decided from the file's fs-verity digest, without reading it.", st.verityDecisions.load(ordering: .relaxed))
        text += counter("events_dropped_total", "Event records dropped (queue full, log unwritable).", st.eventsDropped.load(ordering: .relaxed))
        text += gauge("decision_latency_seconds", "Decision latency of daemon-answered events.", [
            ("{quantile=\"0.5\"}", String((st.latencyQuantile(0.5) ?? 0) / 1e6)),
            ("{quantile=\"0.99\"}", String((st.latencyQuantile(0.99) ?? 0) / 1e6)),
        ])
        text += gauge("policy_serial", "Serial of the applied policy (0: none).", [("", String(s.policy?.serial ?? 0))])
        text += gauge("mode", "1 for the current mode.", Mode.allCases.map { ("{mode=\"\($0.rawValue)\"}", $0 == s.mode ? "1" : "0") })
        text += gauge("mark_failures", "Filesystems that could not be marked (not covered; see appctl status).",
                      [("", String(markFailures.withLock { $0.count }))])
        text += gauge("ready", "1 once start-up is done and every filesystem that could be marked is.", [("", ready.load(ordering: .relaxed) ? "1" : "0")])
        return text
    }

    func writeMetrics(to path: String) {
        do {
            let file = try AtomicFileWriter(path: path, permissions: 0o644)
            do throws(Errno) {
                try file.descriptor.writeAll(Array(metricsText().utf8))
                try file.commit()
            } catch {
                file.abort()
                throw error
            }
        } catch {
            log("appctl: cannot write metrics to \(path): \(error)")
        }
    }

    /// `(ready, JSON object, human-readable lines)` for `appctl status`.
    public func status() -> (ready: Bool, json: String, text: String) {
        let fields = statusFields()
        let json = "{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}"
        let text = fields.map { "\($0.0.split(separator: "_").joined(separator: " ")): \(String($0.1.filter { $0 != "\"" }))" }
            .joined(separator: "\n")
        return (ready.load(ordering: .relaxed), json, text)
    }

    func statusFields() -> [(String, String)] {
        drainExecCounter()   // up to date for this answer (each event is read by one reader; the counts add up)
        let s = policy.snapshot
        let hits = statistics.cacheHits.load(ordering: .relaxed), misses = statistics.cacheMisses.load(ordering: .relaxed)
        let hitRate = hits + misses == 0 ? 0 : Double(hits) / Double(hits + misses)
        func number(_ v: Double?) -> String { v.map { String(format3($0)) } ?? "null" }
        let marks = marked.withLock { $0.values.sorted() }
        let failures = markFailures.withLock { $0 }
        let fields: [(String, String)] = [
            ("ready", ready.load(ordering: .relaxed) ? "true" : "false"),
            ("confined", confined.load(ordering: .relaxed) ? "true" : "false"),
            ("open_events", configuration.openEvents ? "true" : "false"),
            ("hardening", "[" + sysctlGuards.compactMap(\.active).map(jsonString).joined(separator: ",") + "]"),
            ("hardening_failures", "[" + sysctlGuards.compactMap { $0.failure.withLock { $0 } }.map(jsonString).joined(separator: ",") + "]"),
            ("mode", jsonString(s.mode.rawValue)),
            ("pid", String(ownPID)),
            ("uptime_seconds", String(format3(monotonicSeconds() - startedAt))),
            ("policy_path", s.path.map(jsonString) ?? "null"),
            ("policy_serial", s.policy?.serial.map(String.init) ?? "null"),
            ("policy_key_id", s.policy?.keyID.map(jsonString) ?? "null"),
            ("policy_expires", s.policy?.expires.map { jsonString($0.description) } ?? "null"),
            ("policy_expired", (s.policy?.expires.map { $0 <= .now } ?? false) ? "true" : "false"),
            ("policy_allow_entries", String(s.allowCount)),
            ("policy_deny_entries", String(s.denyCount)),
            ("last_policy_error", s.lastError.map(jsonString) ?? "null"),
            ("allowed", String(statistics.allowed.load(ordering: .relaxed))),
            ("denied", String(statistics.denied.load(ordering: .relaxed))),
            ("would_deny", String(statistics.wouldDeny.load(ordering: .relaxed))),
            ("learned_files", String(learned.count)),
            ("cache_hits", String(hits)),
            ("cache_misses", String(misses)),
            ("cache_hit_rate", String(format3(hitRate))),
            ("hashes_computed", String(statistics.hashesComputed.load(ordering: .relaxed))),
            ("bytes_hashed", String(statistics.bytesHashed.load(ordering: .relaxed))),
            ("hashes_in_flight", String(statistics.hashesInFlight.load(ordering: .relaxed))),
            ("own_process_events", String(statistics.ownProcessEvents.load(ordering: .relaxed))),
            ("inert_opens", String(statistics.inertOpens.load(ordering: .relaxed))),
            ("denied_by_size", String(statistics.deniedBySize.load(ordering: .relaxed))),
            ("prehashed", String(statistics.prehashed.load(ordering: .relaxed))),
            ("prehash_dropped", String(statistics.prehashDropped.load(ordering: .relaxed))),
            ("kernel_cache", configuration.kernelCache ? "true" : "false"),
            ("ignore_marks_placed", String(statistics.ignoreMarksPlaced.load(ordering: .relaxed))),
            // Files whose verdict the kernel holds, at most: the kernel drops the mark of an evicted inode
            // silently. Counting the marks from /proc/self/fdinfo would be exact, but the kernel holds the
            // group's mark lock while it prints them (0.4 s at 100k), and placing a mark waits for that lock.
            // Events the kernel answers from the marks cannot be counted at all: fanotify keeps no counter,
            // and counting them in userspace would need an event each — the round trip the marks remove.
            ("kernel_cached_files_at_most", String(statistics.ignoreMarksSinceFlush.load(ordering: .relaxed))),
            ("ignore_mark_errors", String(statistics.ignoreMarkErrors.load(ordering: .relaxed))),
            ("kernel_cache_flushes", String(statistics.kernelCacheFlushes.load(ordering: .relaxed))),
            ("verity_decisions", String(statistics.verityDecisions.load(ordering: .relaxed))),
            ("execs_seen", execCounter == nil ? "null" : String(statistics.execsSeen.load(ordering: .relaxed))),
            ("execs_allowed_by_daemon", String(statistics.execsAllowedByDaemon.load(ordering: .relaxed))),
            ("execs_answered_in_kernel", execCounter == nil ? "null"
                : String(max(0, statistics.execsSeen.load(ordering: .relaxed) - statistics.execsAllowedByDaemon.load(ordering: .relaxed)))),
            ("exec_count_overflows", String(statistics.execCountOverflows.load(ordering: .relaxed))),
            ("execs_not_counted_on", "[" + uncountedMountPoints().map(jsonString).joined(separator: ",") + "]"),
            ("latency_p50_us", number(statistics.latencyQuantile(0.5))),
            ("latency_p99_us", number(statistics.latencyQuantile(0.99))),
            ("events_queued", String(eventLog.queuedCount)),
            ("events_dropped", String(statistics.eventsDropped.load(ordering: .relaxed))),
            ("event_write_errors", String(statistics.eventWriteErrors.load(ordering: .relaxed))),
            ("marked_filesystems", "[" + marks.map(jsonString).joined(separator: ",") + "]"),
            ("mark_failures", "[" + failures.map(jsonString).joined(separator: ",") + "]"),
            ("marked_in_other_namespaces", "[" + markedInOtherNamespaces.withLock { $0.values.sorted() }.map(jsonString).joined(separator: ",") + "]"),
        ]
        return fields
    }

    func log(_ line: String) {
        try? FileDescriptor(rawValue: 2).writeAll(Array((line + "\n").utf8))
    }
}

func format3(_ v: Double) -> String {
    let scaled = (v * 1000).rounded() / 1000
    return String(scaled)
}

/// Learn mode: files that ran and that the inventory lacks, written as an unsigned inventory fragment.
final class LearnRecorder: Sendable {
    private struct State {
        var entries: [String: AllowEntry] = [:]
        var digests = Set<SHA256Digest>()
        var dirty = false
    }
    private let state = Mutex(State())
    let hostname: String

    init(hostname: String) { self.hostname = hostname }

    var isDirty: Bool { state.withLock { $0.dirty } }
    var count: Int { state.withLock { $0.entries.count } }

    /// Records a file; false when this content was recorded already.
    func record(digest: SHA256Digest, size: Int64, fd: Int32) -> Bool {
        if state.withLock({ $0.digests.contains(digest) }) { return false }
        let path = pathOfDescriptor(fd)
        let descriptor = FileDescriptor(rawValue: fd)
        let head = descriptor.readBytes(at: 0, count: ContentClassifier.headerLength)
        let kind = ContentClassifier.classify(head: head, executableBit: true, readAt: descriptor.readBytes) ?? .otherExec
        // No fs-verity digest here: `digest` was taken before this call, and the file's owner could have
        // rewritten it and enabled fs-verity since, pairing harmless content with a verity digest of their
        // choosing. `appctl learn` measures before hashing; run it over files with fs-verity.
        let entry = AllowEntry(digest: digest, size: UInt64(max(0, size)), kind: kind, origin: .local, path: Array(path.utf8))
        return state.withLock { s in
            guard s.digests.insert(digest).inserted else { return false }
            s.entries[entry.escapedPath] = entry   // the newest content seen at a path wins
            s.dirty = true
            return true
        }
    }

    func write(to path: String) throws(PolicyError) {
        let entries = state.withLock { s -> [AllowEntry] in
            s.dirty = false
            return Array(s.entries.values)
        }
        let header = PolicyHeader(issued: .now, description: "learned at run time on \(hostname) by appctl daemon (learn mode); review, then sign")
        try PolicyWriter.write(path: path, header: header, allows: entries, denies: [], signingKey: nil, permissions: 0o600)
    }
}
