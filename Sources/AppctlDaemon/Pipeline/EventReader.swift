import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The event thread: reads the group, turns each permission event into an owned `PermissionRequest`, and
/// sends it forward: triage, then the responder at once (cache hits, data opens, denials by size) or the hash
/// pool (misses). Runs on a thread of its own (a blocking kernel loop must not sit on Swift's cooperative pool)
/// and stops through an eventfd.
final class EventReader: Sendable {
    let group: FanotifyGroup
    let triage: Triage
    let responder: Responder
    let hashPool: HashPool
    let ownPID: Int32
    let statistics: Statistics
    /// The metadata watch of the kernel-side verdicts (nil: the kernel cache is off).
    let attributeWatch: FanotifyGroup?
    let kernelCache: KernelVerdictCache
    private let shutdown: EventNotifier
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(group: FanotifyGroup, triage: Triage, responder: Responder, hashPool: HashPool,
         ownPID: Int32, statistics: Statistics, attributeWatch: FanotifyGroup?, kernelCache: KernelVerdictCache) throws(Errno) {
        self.group = group; self.triage = triage; self.responder = responder; self.hashPool = hashPool
        self.ownPID = ownPID; self.statistics = statistics
        self.attributeWatch = attributeWatch; self.kernelCache = kernelCache
        shutdown = try EventNotifier()
    }

    func start() { startThread(name: "appctl-events") { [self] in run() } }

    /// Stops the loop and waits (up to 5 s) until it has answered what it had read.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        shutdown.signal()
        _ = finished.wait(timeout: .now() + 5)
    }

    private func run() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
        defer { buffer.deallocate(); finished.signal() }
        var watched: [(FileDescriptor, Int16)] = [(group.descriptor, Int16(POLLIN)), (shutdown.descriptor, Int16(POLLIN))]
        if let attributeWatch { watched.append((attributeWatch.descriptor, Int16(POLLIN))) }
        while !stopping.load(ordering: .relaxed) {
            let revents = (try? pollDescriptors(watched, timeoutMilliseconds: -1)) ?? [0, 0]
            // Metadata changes first: a verdict must not stay cached in the kernel after its file's owner, mode or
            // ACL changed, and the events read next may be about that very file.
            if revents.count > 2, revents[2] & Int16(POLLIN) != 0, let attributeWatch {
                let (changes, overflowed) = attributeWatch.drainCount(of: .attributes)
                if changes > 0 || overflowed {
                    statistics.add(.attributeFlushes)
                    kernelCache.flush(reason: "a cached file's owner, mode, ACL or links changed")
                }
            }
            if revents[0] & Int16(POLLIN) != 0 {
                guard let events = try? group.readEvents(into: buffer) else { continue }
                for event in events { dispatch(event) }
            }
        }
        // Answer what arrived before the stop was noticed.
        while let events = try? group.readEvents(into: buffer), !events.isEmpty {
            for event in events { dispatch(event, shuttingDown: true) }
        }
    }

    func dispatch(_ event: FanotifyEvent, shuttingDown: Bool = false) {
        guard event.fd >= 0 else {
            // FAN_NOFD: a queue overflow notice. The queue is unlimited (`FanotifyGroup.create`), so this should never
            // come; if it does, events were lost and the kernel allowed them: count it, status shows it.
            if event.mask & FanotifyGroup.Events.queueOverflow.rawValue != 0 { statistics.add(.queueOverflows) }
            return
        }
        guard event.isPermissionEvent else {
            Glibc.close(event.fd)   // this group asks only questions; close-write notifications have a group of their own
            return
        }
        let request = PermissionRequest(event, receivedAt: monotonicNanoseconds())
        switch triage.triage(request, shuttingDown: shuttingDown) {
        case .answer(let answer): responder.finish(request, answer)
        case .inert(let markInKernel): responder.allowInert(request, markInKernel: markInKernel)
        case .needsHash(let key): hashPool.enqueue(request, key: key)
        case .checkCommandLine(let key, let family): hashPool.enqueueCommandLineCheck(request, key: key, family: family)
        }
    }
}
