import AppctlCore
import AppctlKernel
import Synchronization

/// Watches the metadata of inodes whose verdict the kernel holds: the real one is a `FAN_REPORT_FID`
/// notification group (`FAN_ATTRIB`), tests use a recorder.
protocol AttributeWatch: Sendable {
    func watchInode(of descriptor: Int32, events: FanotifyGroup.Events) throws(Errno)
    func flushInodeMarks() throws(Errno)
}

extension FanotifyGroup: AttributeWatch {}

/// The kernel-side verdict cache: ignore marks on inodes whose verdict holds for every later opener, and the
/// flush that drops them all (reload, mode switch, a revocation seen while marking, a change of a cached
/// file's owner, mode or ACL).
///
/// A verdict may live in the kernel only while nobody but root can change the file. An ignore mark survives
/// `chown`, `chmod` and `setfacl` (and a write through a shared mapping never clears it), so every marked inode
/// is also watched for `FAN_ATTRIB`; the event reader flushes on any such event. The order closes the race
/// with a change made while marking: watch first, then mark, then look at the file again; a change before
/// the look is seen by the look, a change after it by the watch.
final class KernelVerdictCache: Sendable {
    let responder: any PermissionResponder
    let attributeWatch: (any AttributeWatch)?
    let enabled: Bool
    let statistics: Statistics
    /// The events the group watches: an ignore mark for an event it does not watch is refused by the kernel.
    let watchedEvents: FanotifyGroup.Events
    let log: @Sendable (String) -> Void
    /// Counts flushes, so that a placement that a flush overtook (watch removed, mark then added) is undone.
    private let generation = Atomic<Int>(0)

    /// Without an attribute watch (a kernel that refuses the group) the cache stays off: a verdict that could
    /// outlive a chown must not be placed.
    init(responder: any PermissionResponder, attributeWatch: (any AttributeWatch)?, enabled: Bool, watchedEvents: FanotifyGroup.Events,
         statistics: Statistics, log: @escaping @Sendable (String) -> Void) {
        self.responder = responder; self.attributeWatch = attributeWatch; self.enabled = enabled && attributeWatch != nil
        self.watchedEvents = watchedEvents; self.statistics = statistics; self.log = log
    }

    /// Places the kernel-side verdict for the file behind `descriptor`, decided for `key`. `stillHolds` looks at
    /// the file again after the mark exists (a changed identity, or one no longer only root can write, flushes).
    func place(on descriptor: Int32, _ events: FanotifyGroup.Events, key: FileKey, stillHolds: () -> Bool) {
        guard enabled, let attributeWatch else { return }
        let before = generation.load(ordering: .acquiring)
        do {
            try attributeWatch.watchInode(of: descriptor, events: .attributes)
        } catch {
            statistics.add(.ignoreMarkErrors)
            return
        }
        do {
            try responder.ignoreInode(of: descriptor, events: events.intersection(watchedEvents))
            statistics.add(.ignoreMarksPlaced)
            statistics.add(.ignoreMarksSinceFlush)
        } catch {
            statistics.add(.ignoreMarkErrors)
            return
        }
        // A flush between the watch and the mark removed the watch but not the mark: flush again.
        if !stillHolds() || generation.load(ordering: .acquiring) != before {
            flush(reason: "the file changed, or the cache was flushed, while its verdict was placed")
        }
    }

    /// Drops every kernel-side verdict (and the attribute watches that guard them): everything is asked again.
    func flush(reason: String) {
        guard enabled else { return }
        generation.wrappingAdd(1, ordering: .releasing)
        do {
            try responder.flushInodeMarks()
            statistics.set(.ignoreMarksSinceFlush, 0)
            statistics.add(.kernelCacheFlushes)
        } catch {
            log("appctl: cannot flush the kernel verdict cache (\(reason)): \(error)")
        }
        try? attributeWatch?.flushInodeMarks()
    }
}

/// The last stage of the pipeline: answers a request with its verdict, caches the verdict in the kernel where
/// it holds for every later opener, counts it, and hands notable ones to the event log.
final class Responder: Sendable {
    let responder: any PermissionResponder
    let kernelCache: KernelVerdictCache
    let policy: PolicyState
    let learned: LearnRecorder
    let events: any EventSink
    let statistics: Statistics
    let logAllows: Bool
    /// To look at a file again after its verdict is cached in the kernel.
    let facts: any FileFacts
    /// To forget a denied exec (its open never follows, and a later open must not pass for it).
    let caches: DecisionCaches
    let log: @Sendable (String) -> Void
    /// Execution profiles (issue 15): judged here, for every allowed exec, before the answer.
    let profiles: ProfileGate
    /// Where an exec whose command line must be read goes (a hash worker). Set once at start-up, before any event
    /// (`nonisolated(unsafe)`: written once by `Daemon.init` before the threads that read it exist; nil in tests,
    /// which then judge on the calling thread).
    nonisolated(unsafe) var handOffToWorker: (@Sendable (consuming PermissionRequest, Triage.Answer) -> Void)?

    init(responder: any PermissionResponder, kernelCache: KernelVerdictCache, policy: PolicyState, learned: LearnRecorder,
         events: any EventSink, statistics: Statistics, logAllows: Bool, facts: any FileFacts, caches: DecisionCaches,
         log: @escaping @Sendable (String) -> Void) {
        self.responder = responder; self.kernelCache = kernelCache; self.policy = policy; self.learned = learned
        self.events = events; self.statistics = statistics; self.logAllows = logAllows; self.facts = facts; self.caches = caches
        self.log = log
        profiles = ProfileGate(policy: policy, facts: facts, caches: caches, learned: learned, statistics: statistics)
    }

    /// A plain open of data: allowed, and cached in the kernel when `markInKernel` (the key it was judged by).
    func allowInert(_ request: consuming PermissionRequest, markInKernel key: FileKey?) {
        request.answer(allow: true, via: responder, onError: reportAnswerFailure) { fd in
            if let key { kernelCache.place(on: fd, [.openPermission], key: key) { facts.identity(of: fd) == key } }
        }
    }

    /// Everything still queued at shutdown: let through (the kernel allows it anyway once the group closes).
    /// The descriptor stays open until the process exits: a hash worker may still be reading it.
    func allowAtShutdown(_ request: consuming PermissionRequest) {
        request.answer(allow: true, via: responder, closeDescriptor: false, onError: reportAnswerFailure)
    }

    /// Answers and records. For denies, would-denies and learned files the process details are read from /proc
    /// *before* answering: the process is blocked in execve then, so what is read is certainly it (a denied child
    /// often exits within microseconds of the answer). Allows, the hot path, are answered at once.
    /// `onWorker`: called on a hash worker, where an interpreter's command line may be read (profiles).
    /// Returns whether the request was allowed (true when it was handed to a worker, which answers it later; a
    /// worker's own call never hands off).
    @discardableResult
    func finish(_ request: consuming PermissionRequest, _ answer: Triage.Answer, onWorker: Bool = false) -> Bool {
        var verdict = answer.verdict
        if verdict.allow && verdict.requiredKinds != 0 && !Self.isOneOf(verdict.requiredKinds, FileDescriptor(rawValue: request.descriptor)) {
            verdict = policy.verdict(layer: verdict.layer) { Decision.kindNotDelegated(mode: $0) }
        }
        if answer.repeatsExec {
            request.answer(allow: verdict.allow, via: responder, onError: reportAnswerFailure)
            return verdict.allow
        }
        var answer = answer
        // One look at whether profiles are in force or learned: without, nothing below is asked per event.
        if !answer.profileJudged && profiles.inPlay {
            // Once per exec, on the thread that saw it first: the `#!` script before it (a worker sees it later).
            if request.isExec && !answer.handedOff { answer.scriptBefore = profiles.takeScriptBefore(tid: request.pid) }
            if verdict.allow, let digest = answer.digest {
                let onThisThread = onWorker || handOffToWorker == nil
                let judgement = request.isExec
                    ? profiles.judge(tid: request.pid, key: answer.key, digest: digest, fd: request.descriptor, onWorker: onThisThread, scriptBefore: answer.scriptBefore)
                    : profiles.judgeLoaderRun(pid: request.pid, key: answer.key, digest: digest, fd: request.descriptor, onWorker: onThisThread)
                switch judgement {
                case .unchanged:
                    break
                case .refuse(let reason, let subject):
                    verdict = policy.verdict(layer: .profile) { Decision.profileMiss(reason, mode: $0) }
                    verdict.subject = subject
                    statistics.addProfileDenial(subject: subject)
                case .needsWorker:
                    answer.handedOff = true
                    handOffToWorker!(request, answer)
                    return true
                }
            }
            answer.profileJudged = true
            if request.isExec && verdict.allow { profiles.rememberAllowedExec(tid: request.pid, key: answer.key, fd: request.descriptor) }
        }
        let fd = request.descriptor, pid = request.pid, isExec = request.isExec
        if isExec && !verdict.allow, let key = answer.key {
            // No open follows a denied exec: its entry would let a later open of the same file by this process pass
            // for the exec's own (and skip the `mutable` rung). Before the answer, while the process still waits.
            caches.lastExec.withLock { if $0[pid] == key { _ = $0.removeValue(forKey: pid) } }
        }
        // Learn mode: record each new file once (not every exec of it).
        let learnedNew = verdict.decision.record && answer.digest.map { learned.record(digest: $0, size: answer.key?.size ?? 0, fd: fd) } == true
        let outcome = verdict.outcome(logAllows: logAllows, learnedNewFile: learnedNew)
        let notable = outcome?.isNotable == true
        let process = notable ? ProcessSnapshot(pid: pid) : nil
        var path = notable ? pathOfDescriptor(fd) : nil
        let writableBy = verdict.decision.reason == .mutable ? Self.writers(of: fd) : nil

        // Latency ends when the answer is ready: the write that follows can hand the CPU straight to the woken
        // process, which is not time the decision took.
        statistics.recordLatency(nanoseconds: monotonicNanoseconds() &- request.receivedAt)
        let cacheInKernel = verdict.allow && verdict.decision.reason == .known && answer.digest != nil
            && (answer.key?.onlyRootCanWrite == true || answer.verityDigest != nil)
        var marked: FanotifyGroup.Events = []
        request.answer(allow: verdict.allow, via: responder, onError: reportAnswerFailure) { fd in
            // Known content that only root can change (or nobody can: fs-verity): later execs and opens stay in the kernel,
            // as far as every execution profile gives the same answer (`ProfileGate.kernelEvents`).
            if cacheInKernel, let key = answer.key, let digest = answer.digest {
                marked = profiles.kernelEvents(digest, key: key, fd: fd)
                if !marked.isEmpty { kernelCache.place(on: fd, marked, key: key) {
                    // Sealed content stays sealed; anything else must still be the same, root-only file.
                    guard let now = facts.identity(of: fd) else { return false }
                    return answer.verityDigest != nil ? now.isVerity : now == key
                } }
                // A policy with profiles (or profile learning) that came in while marking: what it keeps out of the
                // kernel must not stay there.
                if !marked.isEmpty && !profiles.kernelEvents(digest, key: key, fd: fd).isSuperset(of: marked) {
                    kernelCache.flush(reason: "execution profiles changed while marking")
                }
            }
            if outcome != nil && path == nil { path = pathOfDescriptor(fd) }
        }
        if cacheInKernel, let digest = answer.digest {
            // A reload between the decision and the mark would have flushed before the mark existed: if the
            // policy now in force no longer allows this content (or no longer pairs the verity digest with
            // it), flush again.
            if !policy.decide(digest).allow { kernelCache.flush(reason: "revoked while marking") }
            if let verity = answer.verityDigest, policy.contentDigest(forVerity: verity) != digest {
                kernelCache.flush(reason: "verity pairing revoked while marking")
            }
        }
        statistics.add(verdict.allow ? .allowed : .denied)
        if verdict.allow && isExec { statistics.add(.execsAllowedByDaemon) }
        if verdict.decision.wouldDeny { statistics.add(.wouldDeny) }
        if verdict.candidateWouldDeny { statistics.add(.candidateWouldDeny) }
        if let outcome {
            let key = answer.key
            let snapshot = process ?? ProcessSnapshot(pid: pid)
            var record = EventRecord(
                time: rfc3339Now(), outcome: outcome, reason: verdict.decision.reason, path: path ?? "?",
                digest: answer.digest, size: key?.size ?? -1, device: key?.device ?? 0, inode: key?.inode ?? 0,
                pid: snapshot.processID, process: snapshot, serial: verdict.serial, mode: verdict.mode,
                writableBy: writableBy)
            record.tid = pid
            record.allowedBy = verdict.allowedBy
            record.subject = verdict.subject
            events.submit(record)
        }
        return verdict.allow
    }

    /// Whether the file behind `fd` is of one of `kinds` (`FileKind.bit`s), by its bytes (as learn classifies it).
    /// Only for content a kind-limited supplement alone allows: a read of the first 64 bytes (and the ELF program
    /// headers) from the page cache, on the thread that answers.
    static func isOneOf(_ kinds: UInt8, _ fd: FileDescriptor) -> Bool {
        guard let st = try? fd.status() else { return false }
        let head = fd.readBytes(at: 0, count: ContentClassifier.headerLength)
        let kind = ContentClassifier.classify(head: head, executableBit: st.st_mode & 0o111 != 0) { offset, count in fd.readBytes(at: offset, count: count) }
        return kind.map { kinds & $0.bit != 0 } ?? false
    }

    /// Who besides root could change the file behind `fd`, for the event record of a `mutable` verdict.
    static func writers(of fd: Int32) -> String {
        guard let st = try? FileDescriptor(rawValue: fd).status() else { return "unknown" }
        var who: [String] = []
        if st.st_uid != 0 { who.append("uid \(st.st_uid)") }
        if st.st_mode & 0o020 != 0 { who.append("gid \(st.st_gid)") }
        if st.st_mode & 0o002 != 0 { who.append("everyone") }
        return who.isEmpty ? "the filesystem's server" : who.joined(separator: ", ")
    }

    private func reportAnswerFailure(_ error: Errno) {
        log("appctl: cannot answer an event: \(error)")
    }
}
