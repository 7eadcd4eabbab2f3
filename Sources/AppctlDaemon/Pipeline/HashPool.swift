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
    /// Files being hashed → every request waiting for that hash.
    private let pending = Mutex<[FileKey: [Waiting]]>([:])
    private let jobs = Mutex<[FileKey]>([])
    private let jobsAvailable = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let workersExited = DispatchSemaphore(value: 0)
    private let workerCount: Int

    init(policy: PolicyState, caches: DecisionCaches, responder: Responder, statistics: Statistics, workers: Int) {
        self.policy = policy; self.caches = caches; self.responder = responder; self.statistics = statistics
        workerCount = workers
    }

    func start() {
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
            jobs.withLock { $0.append(key) }
            jobsAvailable.signal()
        }
    }

    /// Stops the workers and answers every request still waiting (allowed: the kernel would allow it anyway once
    /// the group closes). Their descriptors stay open until the answer, and the group until the process exits:
    /// a worker still hashing must not read, nor answer through, a descriptor number a later open could reuse.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        for _ in 0..<workerCount { jobsAvailable.signal() }
        let waiting = pending.withLock { p -> [Waiting] in
            let all = p.values.flatMap { $0 }
            p.removeAll()
            return all
        }
        for w in waiting { if let request = w.request.take() { responder.allowAtShutdown(request) } }
    }

    private func work() {
        // Below the event thread (nice -10), level with ordinary programs: a long hash must not delay the
        // answers the cache gives at once, and the execs waiting for a hash must not starve behind a busy CPU.
        setThreadNice(0)
        let hasher = FileHasher()
        while true {
            jobsAvailable.wait()
            if stopping.load(ordering: .relaxed) { return }
            guard let key = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            guard let descriptor = pending.withLock({ $0[key]?.first?.request?.descriptor }) else { continue }
            let digest = hash(descriptor, key: key, with: hasher)
            let waiters = pending.withLock { $0.removeValue(forKey: key) ?? [] }
            for waiter in waiters {
                guard let request = waiter.request.take() else { continue }
                if let digest {
                    if request.isExec { caches.rememberExec(key, digest) }
                    responder.finish(request, Triage.Answer(verdict: policy.decide(digest), digest: digest, key: key))
                } else {
                    responder.finish(request, Triage.Answer(verdict: policy.verdict(layer: .unreadable) { Decision.unreadable(mode: $0) }, key: key))
                }
            }
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
/// changes again before it runs, the key no longer matches and the exec hashes.
final class Prehasher: Sendable {
    /// Installers set the mode and times right after closing (tar, install): wait this long (50 ms) after the
    /// close before hashing, so the digest is stored under the file's final (ctime, size) key.
    static let settleNanoseconds: UInt64 = 50_000_000
    /// A full queue drops, and the first exec hashes on demand as it would anyway.
    static let queueLimit = 256

    let caches: DecisionCaches
    let statistics: Statistics
    private let queue = Mutex<[(fd: Int32, closedAt: UInt64)]>([])
    private let available = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)

    init(caches: DecisionCaches, statistics: Statistics) {
        self.caches = caches; self.statistics = statistics
    }

    func start() { startThread(name: "appctl-prehash") { [self] in work() } }

    /// Takes the descriptor of a `FAN_CLOSE_WRITE` event (closed here, now or after hashing).
    func submit(descriptor: Int32) {
        let queued = !stopping.load(ordering: .relaxed) && queue.withLock { q -> Bool in
            guard q.count < Self.queueLimit else { return false }
            q.append((descriptor, monotonicNanoseconds()))
            return true
        }
        if queued { available.signal(); return }
        if !stopping.load(ordering: .relaxed) { statistics.add(.prehashDropped) }
        Glibc.close(descriptor)
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        let dropped = queue.withLock { q -> [Int32] in defer { q.removeAll() }; return q.map(\.fd) }
        for fd in dropped { Glibc.close(fd) }
        available.signal()
    }

    private func work() {
        setThreadNice(19)
        let hasher = FileHasher()
        while true {
            available.wait()
            guard let (fd, closedAt) = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
                if stopping.load(ordering: .relaxed) { return }
                continue
            }
            defer { Glibc.close(fd) }
            if stopping.load(ordering: .relaxed) { continue }
            let settled = closedAt + Self.settleNanoseconds
            let now = monotonicNanoseconds()
            if now < settled { usleep(UInt32((settled - now) / 1000)) }
            let file = FileDescriptor(rawValue: fd)
            guard let key = (try? file.identity()).map(FileKey.init), key.onlyRootCanWrite, caches.digest(of: key) == nil,
                  let st = try? file.status() else { continue }
            guard ContentClassifier.sniff(file.readBytes(at: 0, count: ContentClassifier.sniffLength)) != .other || st.isExecutableByMode else { continue }
            guard let result = try? hasher.hash(file, sizeHint: key.size),
                  (try? file.identity()).map(FileKey.init) == key, result.bytesRead == key.size else { continue }
            caches.remember(result.sha256, for: key)
            statistics.add(.prehashed)
            statistics.add(.bytesHashed, Int(result.bytesRead))
        }
    }
}
