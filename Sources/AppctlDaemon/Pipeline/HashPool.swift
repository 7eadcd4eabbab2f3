import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Hash workers: each miss is hashed once, from the event's own descriptor, however many events wait on that
/// file; then every waiting event is decided and answered. Off the event thread, so a slow hash never delays
/// an answer that the cache can give.
final class HashPool: Sendable {
    /// One waiting request. A class box because arrays cannot hold non-copyable values.
    final class Waiting: @unchecked Sendable {   // only touched under `pending`'s lock, or after removal from it
        var request: PermissionRequest?
        init(_ request: consuming PermissionRequest) { self.request = consume request }
    }

    let policy: PolicyState
    let caches: DecisionCaches
    let responder: Responder
    let statistics: Statistics
    /// Set once the daemon is built (the triage and the pool refer to each other's results, not to each other).
    let triage: Triage
    let facts: any FileFacts
    let leases: LeaseKeeper
    /// Files being hashed → every request waiting for that hash.
    private let pending = Mutex<[FileKey: [Waiting]]>([:])
    private enum Job { case hash(FileKey), commandLine(Waiting, FileKey, InterpreterFamily), profile(Waiting, Triage.Answer) }
    private let jobs = Mutex<[Job]>([])
    private let jobsAvailable = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let workersExited = DispatchSemaphore(value: 0)
    private let workerCount: Int

    init(policy: PolicyState, caches: DecisionCaches, responder: Responder, statistics: Statistics, triage: Triage, facts: any FileFacts,
         leases: LeaseKeeper, workers: Int) {
        self.policy = policy; self.caches = caches; self.responder = responder; self.statistics = statistics
        self.triage = triage; self.facts = facts; self.leases = leases
        workerCount = workers
    }

    /// Queues the check of an interpreter's command line for a request (is this open its program?).
    func enqueueCommandLineCheck(_ request: consuming PermissionRequest, key: FileKey, family: InterpreterFamily) {
        let waiting = Waiting(request)
        jobs.withLock { $0.append(.commandLine(waiting, key, family)) }
        jobsAvailable.signal()
    }

    /// Queues an exec whose execution profile needs the new command line read (an interpreter): judged and answered
    /// on a worker (`Responder.finish(onWorker:)`).
    func enqueueProfileCheck(_ request: consuming PermissionRequest, answer: Triage.Answer) {
        let waiting = Waiting(request)
        jobs.withLock { $0.append(.profile(waiting, answer)) }
        jobsAvailable.signal()
    }

    func start() {
        leases.start()
        for i in 0..<workerCount {
            startThread(name: "appctl-hash-\(i)") { [self] in work() }
        }
    }

    /// Queues a request for the hash of `key`; a file already being hashed gets no second job.
    func enqueue(_ request: consuming PermissionRequest, key: FileKey) {
        let waiting = Waiting(request)
        let isNewJob = pending.withLock { p -> Bool in
            let isNew = p[key] == nil
            p[key, default: []].append(waiting)
            return isNew
        }
        if isNewJob {
            jobs.withLock { $0.append(.hash(key)) }
            jobsAvailable.signal()
        }
    }

    /// Stops the workers and answers every request still waiting (allowed: the kernel would allow it anyway once
    /// the group closes). Their descriptors stay open until the answer, and the group until the process exits:
    /// a worker still hashing must not read, nor answer through, a descriptor number a later open could reuse.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        for _ in 0..<workerCount { jobsAvailable.signal() }
        leases.stop()
        let waiting = pending.withLock { p -> [Waiting] in
            let all = p.values.flatMap { $0 }
            p.removeAll()
            return all
        }
        for w in waiting { if let request = w.request.take() { responder.allowAtShutdown(request) } }
        let checks = jobs.withLock { j -> [Waiting] in
            defer { j.removeAll() }
            return j.compactMap {
                if case .commandLine(let w, _, _) = $0 { return w }
                if case .profile(let w, _) = $0 { return w }
                return nil
            }
        }
        for w in checks { if let request = w.request.take() { responder.allowAtShutdown(request) } }
    }

    private func work() {
        // Below the event thread (nice -10), level with ordinary programs: a long hash must not delay the
        // answers the cache gives at once, and the execs waiting for a hash must not starve behind a busy CPU.
        setThreadNice(0)
        let hasher = FileHasher()
        while true {
            jobsAvailable.wait()
            if stopping.load(ordering: .relaxed) { return }
            guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            let key: FileKey
            switch job {
            case .hash(let k): key = k
            case .commandLine(let waiting, let k, let family):
                if let request = waiting.request.take() { checkCommandLine(request, key: k, family: family) }
                continue
            case .profile(let waiting, let answer):
                if let request = waiting.request.take() { responder.finish(request, answer, onWorker: true) }
                continue
            }
            let first = pending.withLock { p -> (Int32, Int32)? in
                guard let waiting = p[key]?.first, let descriptor = waiting.request?.descriptor, let pid = waiting.request?.pid else { return nil }
                return (descriptor, pid)
            }
            guard let (descriptor, firstPID) = first else { continue }
            // A file someone other than root can write: no writer may exist from before the hash until the kernel
            // denies writers to the running program (`LeaseKeeper`). A writer now means the verdict cannot hold.
            let leased = !key.onlyRootCanWrite && !key.isVerity
            // The duplicate that keeps the lease past the answers is made before anything is decided: without it
            // nothing would hold writers off until the exec's own write denial.
            var kept: FileDescriptor? = nil
            if leased && leases.mayHold(for: firstPID) && leases.lease(descriptor) { kept = leases.duplicate(descriptor) }
            if leased && kept == nil {
                let waiters = pending.withLock { $0.removeValue(forKey: key) ?? [] }
                for waiter in waiters {
                    guard let request = waiter.request.take() else { continue }
                    statistics.add(.mutableDenials)
                    responder.finish(request, Triage.Answer(verdict: policy.verdict(layer: .mutable) { Decision.mutable(mode: $0) }, key: key))
                }
                continue
            }
            let digest = hash(descriptor, key: key, with: hasher)
            let waiters = pending.withLock { $0.removeValue(forKey: key) ?? [] }
            // Held until every waiting process is past the kernel's write denial (or gone), handed over after the
            // answers (the duplicate was made before them).
            var pids: [Int32] = []
            var known = false
            for waiter in waiters {
                guard let request = waiter.request.take() else { continue }
                let verdict = digest.map { policy.decide($0, waitForWindow: true) } ?? policy.verdict(layer: .unreadable) { Decision.unreadable(mode: $0) }
                if verdict.allow && verdict.decision.reason == .known { known = true }
                if let digest, request.isExec { caches.rememberExec(key, digest) }
                let pid = request.pid
                // Only allowed execs need the lease kept: a denied one (by the policy or an execution profile) never
                // reaches the write denial (and holding leases for denials let one process slow everyone, a review showed).
                if responder.finish(request, Triage.Answer(verdict: verdict, digest: digest, key: key), onWorker: true) { pids.append(pid) }
            }
            if let kept {
                // Known content: once the execs are past their write denial, the lease is kept as its verdict.
                if pids.isEmpty { kept.releaseLease(); kept.close() } else { leases.keep(kept, forExecsOf: pids, key: key, verdict: known ? digest : nil) }
            }
        }
    }

    /// Whether the interpreter opens the file as its program (its command line, read here off the event thread,
    /// within `InterpreterRule`'s budget); then the rest of the ladder, or a plain data open.
    private func checkCommandLine(_ request: consuming PermissionRequest, key: FileKey, family: InterpreterFamily) {
        statistics.add(.commandLineChecks)
        guard facts.opensAsProgram(pid: request.pid, family: family, key: key, descriptor: request.descriptor) else {
            statistics.add(.inertOpens)
            responder.allowInert(request, markInKernel: nil)
            return
        }
        switch triage.decideProgram(request, key: key, opensAsProgram: true) {
        case .answer(let answer): responder.finish(request, answer, onWorker: true)
        case .needsHash(let key): enqueue(request, key: key)
        case .inert, .checkCommandLine: responder.finish(request, Triage.Answer(verdict: policy.verdict(layer: .unreadable) { Decision.unreadable(mode: $0) }, key: key))
        }
    }

    /// The file's SHA-256, read from the event's descriptor; nil when it cannot be read.
    private func hash(_ descriptor: Int32, key: FileKey, with hasher: FileHasher) -> SHA256Digest? {
        statistics.add(.hashesInFlight)
        defer { statistics.add(.hashesInFlight, -1) }
        guard let result = try? hasher.hash(FileDescriptor(rawValue: descriptor), sizeHint: key.size) else { return nil }
        statistics.add(.hashesComputed)
        statistics.add(.bytesHashed, Int(result.bytesRead))
        // Cache only what was hashed whole and unchanged meanwhile, and only root can change.
        if key.onlyRootCanWrite, (try? FileDescriptor(rawValue: descriptor).identity()).map(FileKey.init) == key, result.bytesRead == key.size {
            caches.remember(result.sha256, for: key)
        }
        return result.sha256
    }
}

/// Hashes freshly written files that hold executable content (ELF, `#!`, an execute bit) at the lowest
/// priority. The digest goes into the same cache as any other, keyed by (dev, ino, ctime, size): if the file
/// changes again before it runs, the key no longer matches and the exec hashes. It reads its own notification
/// group (`FAN_CLOSE_WRITE`, bounded queue): the permission group's queue is unlimited, and notifications
/// nobody waits for must not grow it while the event thread is busy.
final class Prehasher: Sendable {
    /// Installers set the mode and times right after closing (tar, install): wait this long (50 ms) after the
    /// close before hashing, so the digest is stored under the file's final (ctime, size) key.
    static let settleNanoseconds: UInt64 = 50_000_000
    /// A full queue drops, and the first exec hashes on demand as it would anyway.
    static let queueLimit = 256

    let caches: DecisionCaches
    let statistics: Statistics
    /// Nil in tests, which `submit` by hand.
    let notifier: FanotifyGroup?
    let ownPID: Int32
    private let queue = Mutex<[(fd: Int32, closedAt: UInt64)]>([])
    private let stopping = Atomic<Bool>(false)
    private let wakeup: EventNotifier?

    init(caches: DecisionCaches, statistics: Statistics, notifier: FanotifyGroup? = nil, ownPID: Int32 = getpid()) {
        self.caches = caches; self.statistics = statistics; self.notifier = notifier; self.ownPID = ownPID
        wakeup = try? EventNotifier()
    }

    func start() { startThread(name: "appctl-prehash") { [self] in work() } }

    /// Takes the descriptor of a `FAN_CLOSE_WRITE` event (closed here, now or after hashing).
    func submit(descriptor: Int32) {
        let queued = !stopping.load(ordering: .relaxed) && queue.withLock { q -> Bool in
            guard q.count < Self.queueLimit else { return false }
            q.append((descriptor, monotonicNanoseconds()))
            return true
        }
        if queued { return }
        if !stopping.load(ordering: .relaxed) { statistics.add(.prehashDropped) }
        Glibc.close(descriptor)
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        wakeup?.signal()
        let dropped = queue.withLock { q -> [Int32] in defer { q.removeAll() }; return q.map(\.fd) }
        for fd in dropped { Glibc.close(fd) }
    }

    private func work() {
        setThreadNice(19)
        let hasher = FileHasher()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 8)
        defer { buffer.deallocate() }
        var watched: [(FileDescriptor, Int16)] = []
        if let notifier { watched.append((notifier.descriptor, Int16(POLLIN))) }
        if let wakeup { watched.append((wakeup.descriptor, Int16(POLLIN))) }
        while !stopping.load(ordering: .relaxed) {
            let idle = queue.withLock { $0.isEmpty }
            let revents = (try? pollDescriptors(watched, timeoutMilliseconds: idle ? -1 : 0)) ?? []
            if let notifier, revents.first.map({ $0 & Int16(POLLIN) != 0 }) == true, let events = try? notifier.readEvents(into: buffer) {
                for event in events {
                    if event.fd < 0 {   // FAN_Q_OVERFLOW: notifications lost; their first execs hash on demand
                        statistics.add(.prehashDropped)
                    } else if event.pid == ownPID || !event.isCloseWrite {
                        Glibc.close(event.fd)
                    } else {
                        submit(descriptor: event.fd)
                    }
                }
            }
            guard let (fd, closedAt) = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            prehash(fd, closedAt: closedAt, with: hasher)
            Glibc.close(fd)
        }
    }

    private func prehash(_ fd: Int32, closedAt: UInt64, with hasher: FileHasher) {
        let settled = closedAt + Self.settleNanoseconds
        let now = monotonicNanoseconds()
        if now < settled { usleep(UInt32((settled - now) / 1000)) }
        let file = FileDescriptor(rawValue: fd)
        guard let key = (try? file.identity()).map(FileKey.init), key.onlyRootCanWrite, caches.digest(of: key) == nil,
              let st = try? file.status() else { return }
        guard ContentClassifier.sniff(file.readBytes(at: 0, count: ContentClassifier.sniffLength)) != .other || st.isExecutableByMode else { return }
        guard let result = try? hasher.hash(file, sizeHint: key.size),
              (try? file.identity()).map(FileKey.init) == key, result.bytesRead == key.size else { return }
        caches.remember(result.sha256, for: key)
        statistics.add(.prehashed)
        statistics.add(.bytesHashed, Int(result.bytesRead))
    }
}
