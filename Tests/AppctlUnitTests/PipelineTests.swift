@testable import AppctlDaemon
import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

// The daemon's decision ladder, responder, hash pool and control plane, with a fake kernel: no root, no
// fanotify. The real-kernel behaviour is pinned by AppctlIntegrationTests.

/// Records every answer, ignore mark and flush instead of talking to a fanotify group.
final class RecordingResponder: PermissionResponder, AttributeWatch, @unchecked Sendable {
    struct State {
        var answers: [(fd: Int32, allow: Bool)] = []; var marks: [(fd: Int32, events: FanotifyGroup.Events)] = []; var flushes = 0
        var watches: [Int32] = []
    }
    func watchInode(of descriptor: Int32, events: FanotifyGroup.Events) throws(Errno) { state.withLock { $0.watches.append(descriptor) } }
    var watches: [Int32] { state.withLock { $0.watches } }
    let state = Mutex(State())
    func respond(to eventDescriptor: Int32, allow: Bool) throws(Errno) { state.withLock { $0.answers.append((eventDescriptor, allow)) } }
    func ignoreInode(of eventDescriptor: Int32, events: FanotifyGroup.Events) throws(Errno) { state.withLock { $0.marks.append((eventDescriptor, events)) } }
    func flushInodeMarks() throws(Errno) { state.withLock { $0.flushes += 1 } }
    var answers: [(fd: Int32, allow: Bool)] { state.withLock { $0.answers } }
    var marks: [(fd: Int32, events: FanotifyGroup.Events)] { state.withLock { $0.marks } }
    var flushes: Int { state.withLock { $0.flushes } }
}

/// Fixed answers to what the ladder asks about files and processes, by descriptor and pid.
final class FakeFacts: FileFacts, @unchecked Sendable {
    var identities: [Int32: FileKey] = [:]
    var classes: [Int32: ContentClass] = [:]
    var interpreters: [Int32: InterpreterFamily] = [:]
    var programs: Set<Int32> = []           // descriptors an interpreter opens as its program
    var verity: [Int32: SHA256Digest] = [:]
    func identity(of descriptor: Int32) -> FileKey? { identities[descriptor] }
    func contentClass(of descriptor: Int32) -> ContentClass { classes[descriptor] ?? .other }
    func interpreter(of pid: Int32, executableDigest: (FileKey) -> SHA256Digest?) -> InterpreterFamily? { interpreters[pid] }
    func opensAsProgram(pid: Int32, family: InterpreterFamily, key: FileKey, descriptor: Int32) -> Bool { programs.contains(descriptor) }
    func verityDigest(of descriptor: Int32) -> SHA256Digest? { verity[descriptor] }
}

final class CollectingSink: EventSink, @unchecked Sendable {
    let records = Mutex<[EventRecord]>([])
    func submit(_ record: EventRecord) { records.withLock { $0.append(record) } }
    var outcomes: [Outcome] { records.withLock { $0.map(\.outcome) } }
}

/// A pipeline around a real signed policy in a temporary directory, with a fake kernel.
final class Pipeline: @unchecked Sendable {
    let dir = TemporaryDirectory("appctl-pipeline")
    let keys: TestKeys
    let policy: PolicyState
    let statistics = Statistics()
    let caches = DecisionCaches()
    let facts = FakeFacts()
    let kernel = RecordingResponder()
    let sink = CollectingSink()
    let learned = LearnRecorder(hostname: "test")
    let known = SHA256Digest.of(Array("known content".utf8))
    let blocked = SHA256Digest.of(Array("blocked content".utf8))
    let unknown = SHA256Digest.of(Array("unknown content".utf8))
    let attributeWatch = RecordingResponder()
    lazy var kernelCache = KernelVerdictCache(responder: kernel, attributeWatch: attributeWatch, enabled: true,
                                              watchedEvents: [.openExecPermission, .openPermission], statistics: statistics, log: { _ in })
    lazy var responder = Responder(responder: kernel, kernelCache: kernelCache, policy: policy, learned: learned, events: sink,
                                   statistics: statistics, logAllows: false, facts: facts, caches: caches, log: { _ in })
    lazy var triage = Triage(policy: policy, caches: caches, facts: facts, statistics: statistics, ownPID: 4242, kernelCache: true)

    init(mode: Mode, allowSizes: [UInt64] = [13], extraAllows: [(SHA256Digest, UInt64)] = []) throws {
        keys = try TestKeys(in: dir)
        policy = PolicyState(mode: mode, stateDirectory: dir.file("state"), hostname: "test")
        var allows = [AllowEntry(digest: known, size: allowSizes[0], kind: .elfExec, origin: .manual, path: Array("/known".utf8))]
        for (digest, size) in extraAllows { allows.append(AllowEntry(digest: digest, size: size, kind: .script, origin: .manual, path: Array("/extra".utf8))) }
        let header = PolicyHeader(serial: 1, issued: .now, keyID: keys.publicKey.keyID)
        try PolicyWriter.write(path: dir.file("policy.txt"), header: header, allows: allows,
                               denies: [DenyEntry(digest: blocked, note: "test")], signingKey: keys.privateKey)
        guard case .success = policy.apply(path: dir.file("policy.txt"), keyPath: keys.publicPath, allowRollback: false) else {
            throw HarnessError("policy not applied")
        }
    }

    /// A request on a real descriptor (of /dev/null: the answer closes it), with the facts the test gives it.
    func request(exec: Bool, pid: Int32 = 100, key: FileKey?, contentClass: ContentClass = .other) -> PermissionRequest {
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if let key { facts.identities[fd] = key }
        facts.classes[fd] = contentClass
        let mask = exec ? FanotifyGroup.Events.openExecPermission.rawValue : FanotifyGroup.Events.openPermission.rawValue
        return PermissionRequest(FanotifyEvent(mask: mask, fd: fd, pid: pid), receivedAt: monotonicNanoseconds())
    }

    /// Runs one request through triage and the responder, as the event reader does; a miss is reported, not hashed.
    @discardableResult
    func decide(_ request: consuming PermissionRequest, shuttingDown: Bool = false) -> Triage.Result {
        let result = triage.triage(request, shuttingDown: shuttingDown)
        switch result {
        case .answer(let answer): responder.finish(request, answer)
        case .inert(let mark): responder.allowInert(request, markInKernel: mark)
        case .needsHash: responder.allowAtShutdown(request)   // not under test here: released
        case .checkCommandLine(let key, let family):
            // What a hash worker does with it, here on the test's thread.
            if facts.opensAsProgram(pid: request.pid, family: family, key: key, descriptor: request.descriptor) {
                switch triage.decideProgram(request, key: key, opensAsProgram: true) {
                case .answer(let answer): responder.finish(request, answer)
                default: responder.allowAtShutdown(request)
                }
            } else {
                statistics.add(.inertOpens)
                responder.allowInert(request, markInKernel: nil)
            }
        }
        return result
    }

    /// Triage alone: the request is then released through a throw-away responder, so nothing is left unanswered.
    func peek(_ request: consuming PermissionRequest) -> Triage.Result {
        let result = triage.triage(request)
        request.answer(allow: true, via: RecordingResponder())
        return result
    }

    deinit { dir.remove() }
}

func rootOnly(_ inode: UInt64, size: Int64 = 13, verity: Bool = false) -> FileKey {
    FileKey(device: 1, inode: inode, changeTime: 7, size: size, isVerity: verity, onlyRootCanWrite: true)
}
func userWritable(_ inode: UInt64, size: Int64 = 13) -> FileKey {
    FileKey(device: 1, inode: inode, changeTime: 7, size: size, onlyRootCanWrite: false)
}

extension Triage.Result {
    var layer: Verdict.Layer? { if case .answer(let a) = self { return a.verdict.layer }; return nil }
    var allows: Bool? { if case .answer(let a) = self { return a.verdict.allow }; return nil }
    var isInert: Bool { if case .inert = self { return true }; return false }
    var needsHash: Bool { if case .needsHash = self { return true }; return false }
}

@Suite struct TriageTests {
    @Test func ownProcessIsAllowedWithoutLookingAtTheFile() throws {
        let p = try Pipeline(mode: .enforce)
        let r = p.decide(p.request(exec: true, pid: 4242, key: nil))
        #expect(r.layer == .ownProcess && r.allows == true)
        #expect(p.kernel.answers.map(\.allow) == [true])
        #expect(p.statistics[.ownProcessEvents] == 1)
    }

    @Test func unidentifiableFileIsUnreadableAndDeniedInEnforceOnly() throws {
        let p = try Pipeline(mode: .enforce)
        #expect(p.decide(p.request(exec: true, key: nil)).allows == false)
        #expect(p.sink.outcomes == [.deny])
        let m = try Pipeline(mode: .monitor)
        let r = m.decide(m.request(exec: true, key: nil))
        #expect(r.layer == .unreadable && r.allows == true)
        #expect(m.sink.outcomes == [.wouldDeny])
    }

    @Test func openCompletingAnExecRepeatsItsAnswerSilently() throws {
        let p = try Pipeline(mode: .enforce)
        let key = rootOnly(1)
        p.caches.remember(p.known, for: key)
        p.decide(p.request(exec: true, key: key))
        let statsBefore = p.statistics[.allowed]
        let r = p.decide(p.request(exec: false, key: key))
        guard case .answer(let answer) = r else { Issue.record("not answered"); return }
        #expect(answer.repeatsExec && answer.verdict.allow)
        #expect(p.statistics[.allowed] == statsBefore, "the second event of one exec is not counted again")
        #expect(p.kernel.answers.count == 2)
        // Only once: the next open of the same file is an ordinary one.
        guard case .answer(let again) = p.peek(p.request(exec: false, key: key, contentClass: .elf)) else { Issue.record("not answered"); return }
        #expect(!again.repeatsExec)
    }

    @Test func plainDataOpensAreInertAndRootOnlyDataIsCachedInTheKernel() throws {
        let p = try Pipeline(mode: .enforce)
        #expect(p.decide(p.request(exec: false, key: rootOnly(2))) == .inert(markInKernel: rootOnly(2)))
        #expect(p.decide(p.request(exec: false, key: userWritable(3))) == .inert(markInKernel: nil))
        #expect(p.kernel.answers.map(\.allow) == [true, true])
        #expect(p.kernel.marks.count == 1 && p.kernel.marks[0].events == [.openPermission])
        #expect(p.statistics[.inertOpens] == 2 && p.sink.outcomes.isEmpty)
    }

    @Test func elfOpensAndInterpreterProgramsAreDecidedLikeExecs() throws {
        let p = try Pipeline(mode: .enforce)
        #expect(p.decide(p.request(exec: false, key: userWritable(4, size: 99), contentClass: .elf)).allows == false)
        // A #! script opened by an interpreter is its program, whatever its command line says.
        p.facts.interpreters[200] = .shell
        #expect(p.decide(p.request(exec: false, pid: 200, key: userWritable(5, size: 99), contentClass: .shebang)).allows == false)
        // A plain file an interpreter opens counts only when it is its program, which its command line says: that is
        // read off the event thread (issue 10, case 7: attacker-chosen paths, symlink chains, filesystems that hang).
        #expect(p.peek(p.request(exec: false, pid: 200, key: userWritable(6, size: 99))) == .checkCommandLine(userWritable(6, size: 99), .shell))
        p.decide(p.request(exec: false, pid: 200, key: userWritable(6, size: 99)))
        #expect(p.statistics[.inertOpens] == 1)
        let program = p.request(exec: false, pid: 200, key: userWritable(7, size: 99))
        p.facts.programs.insert(program.descriptor)
        #expect(p.decide(program) == .checkCommandLine(userWritable(7, size: 99), .shell))
        #expect(p.sink.outcomes == [.deny, .deny, .deny])
        // All three were refused unread: files others can change are `mutable` before any digest is taken.
        #expect(p.sink.records.withLock { $0.map(\.reason) } == [.mutable, .mutable, .mutable])
    }

    @Test func codeOthersCanChangeIsMutableButExecsAndSealedFilesAreNot() throws {
        let p = try Pipeline(mode: .enforce)
        // A library the attacker owns: mutable, whatever its digest.
        let library = p.decide(p.request(exec: false, key: userWritable(40), contentClass: .elf))
        #expect(library.layer == .mutable && library.allows == false)
        // The exec of the same file, and the open that completes it, go on to be hashed.
        #expect(p.peek(p.request(exec: true, pid: 300, key: userWritable(41))).needsHash)
        #expect(p.peek(p.request(exec: false, pid: 300, key: userWritable(41), contentClass: .elf)).needsHash)
        // fs-verity seals content whoever owns it.
        #expect(!(p.peek(p.request(exec: false, key: userWritable(42).withVerity(), contentClass: .elf)).layer == .mutable))
        // Root-only libraries are decided by content.
        #expect(p.peek(p.request(exec: false, key: rootOnly(43), contentClass: .elf)).needsHash)
        // Monitor mode: would-deny.
        let m = try Pipeline(mode: .monitor)
        m.decide(m.request(exec: false, key: userWritable(44), contentClass: .elf))
        #expect(m.sink.outcomes == [.wouldDeny])
    }

    /// Review finding: a denied exec is followed by no open, so its entry must not let a later open by the same
    /// process pass for the exec's own.
    @Test func aDeniedExecLeavesNoEntryForALaterOpen() throws {
        let p = try Pipeline(mode: .enforce)
        let key = userWritable(46)
        // The exec goes to be hashed; the hash pool finds unknown content and denies it.
        #expect(p.peek(p.request(exec: true, pid: 301, key: key)).needsHash)
        p.responder.finish(p.request(exec: true, pid: 301, key: key), Triage.Answer(verdict: p.policy.decide(p.unknown), digest: p.unknown, key: key))
        let later = p.decide(p.request(exec: false, pid: 301, key: key, contentClass: .elf))
        #expect(later.layer == .mutable, "a later open passed for the denied exec's own")
    }

    @Test func execsFromFilesystemsWhoseServerCanChangeThemAreMutable() throws {
        let p = try Pipeline(mode: .enforce)
        var key = userWritable(47)
        key.onUntrustedFilesystem = true
        #expect(p.peek(p.request(exec: true, key: key)).layer == .mutable)
    }

    @Test func theDocumentedSwitchDecidesMutableCodeByDigest() throws {
        let p = try Pipeline(mode: .enforce)
        let lenient = Triage(policy: p.policy, caches: p.caches, facts: p.facts, statistics: p.statistics, ownPID: 4242,
                             kernelCache: true, allowMutableCode: true)
        let r = p.request(exec: false, key: userWritable(45), contentClass: .elf)
        let result = lenient.triage(r)
        r.answer(allow: true, via: RecordingResponder())
        #expect(result.needsHash)
    }

    @Test func cachedDigestsDecideOnlyRootOnlyFiles() throws {
        let p = try Pipeline(mode: .enforce)
        p.caches.remember(p.known, for: rootOnly(8))
        let hit = p.decide(p.request(exec: true, key: rootOnly(8)))
        #expect(hit.layer == .digest && hit.allows == true && p.statistics[.cacheHits] == 1)
        // Known content that only root can change: cached in the kernel for execs and opens.
        #expect(p.kernel.marks.last?.events == [.openExecPermission, .openPermission])
        // The same identity on a file others can write is never taken from the cache.
        p.caches.remember(p.known, for: userWritable(9))
        #expect(p.peek(p.request(exec: true, key: userWritable(9))).needsHash)
    }

    @Test func blocklistedCachedContentIsDeniedInEveryModeAndNeverMarked() throws {
        for mode in Mode.allCases {
            let p = try Pipeline(mode: mode)
            p.caches.remember(p.blocked, for: rootOnly(10))
            #expect(p.decide(p.request(exec: true, key: rootOnly(10))).allows == false, "\(mode)")
            #expect(p.kernel.marks.isEmpty)
        }
    }

    @Test func shuttingDownLetsMissesThrough() throws {
        let p = try Pipeline(mode: .enforce)
        let r = p.decide(p.request(exec: true, key: userWritable(11)), shuttingDown: true)
        #expect(r.layer == .shutdown && r.allows == true)
    }

    @Test func verityFilesAreDecidedByTheirPairedDigestAndSealed() throws {
        // A policy whose allow entry carries a verity digest.
        let p = try Pipeline(mode: .enforce)
        let verity = SHA256Digest.of(Array("verity".utf8))
        var entry = AllowEntry(digest: p.known, size: 13, kind: .elfExec, origin: .manual, path: Array("/v".utf8))
        entry.verity = verity
        let header = PolicyHeader(serial: 2, issued: .now, keyID: p.keys.publicKey.keyID)
        try PolicyWriter.write(path: p.dir.file("policy.txt"), header: header, allows: [entry], denies: [], signingKey: p.keys.privateKey)
        guard case .success = p.policy.apply(path: p.dir.file("policy.txt"), keyPath: p.keys.publicPath, allowRollback: false) else {
            Issue.record("verity policy not applied"); return
        }
        let request = p.request(exec: true, key: userWritable(12).withVerity())
        p.facts.verity[request.descriptor] = verity
        let r = p.decide(request)
        #expect(r.layer == .verity && r.allows == true && p.statistics[.verityDecisions] == 1)
        #expect(p.kernel.marks.count == 1, "sealed content is cached in the kernel whoever owns it")
    }

    @Test func sizeFilterDeniesUnreadInEnforceModeOnly() throws {
        let p = try Pipeline(mode: .enforce)
        let r = p.decide(p.request(exec: true, key: userWritable(13, size: 12345)))
        #expect(r.layer == .sizeFilter && r.allows == false && p.statistics[.deniedBySize] == 1)
        let m = try Pipeline(mode: .monitor)
        #expect(m.peek(m.request(exec: true, key: userWritable(13, size: 12345))).needsHash)
    }

    @Test func everythingElseIsHashed() throws {
        let p = try Pipeline(mode: .enforce)
        #expect(p.peek(p.request(exec: true, key: userWritable(14))).needsHash)
        #expect(p.statistics[.cacheMisses] == 1)
    }
}

extension FileKey {
    func withVerity() -> FileKey { var k = self; k.isVerity = true; return k }
}

extension Triage.Result: Equatable {
    public static func == (a: Triage.Result, b: Triage.Result) -> Bool {
        switch (a, b) {
        case (.inert(let x), .inert(let y)): return x == y
        case (.needsHash(let x), .needsHash(let y)): return x == y
        case (.checkCommandLine(let x, let f), .checkCommandLine(let y, let g)): return x == y && f == g
        case (.answer(let x), .answer(let y)): return x.verdict == y.verdict && x.digest == y.digest
        default: return false
        }
    }
}

@Suite(.serialized) struct ResponderTests {
    /// Issue 10, case 4: every kernel-side verdict is watched for metadata changes, and a file that changed while
    /// its verdict was being placed is flushed at once.
    @Test func kernelVerdictsAreWatchedAndAChangeWhileMarkingFlushes() throws {
        let p = try Pipeline(mode: .enforce)
        let key = rootOnly(50)
        p.caches.remember(p.known, for: key)
        let request = p.request(exec: true, key: key)
        let fd = request.descriptor
        p.decide(request)
        #expect(p.attributeWatch.watches == [fd] && p.kernel.marks.count == 1 && p.kernel.flushes == 0)
        // The same, but the file was chowned between the verdict and the mark: its identity changed.
        let changed = p.request(exec: true, key: key)
        p.facts.identities[changed.descriptor] = userWritable(50)   // what fstat says by the time of the mark
        p.responder.finish(changed, Triage.Answer(verdict: p.policy.decide(p.known), digest: p.known, key: key))
        #expect(p.kernel.flushes == 1, "a verdict placed for a file that changed meanwhile is flushed")
        // No watch, no kernel verdict.
        let unwatched = KernelVerdictCache(responder: p.kernel, attributeWatch: nil, enabled: true, watchedEvents: [.openPermission],
                                           statistics: p.statistics, log: { _ in })
        #expect(!unwatched.enabled)
    }

    @Test func aRequestDroppedWithoutAnAnswerIsCounted() throws {
        let before = PermissionRequest.droppedUnanswered.load(ordering: .relaxed)
        do {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            _ = PermissionRequest(FanotifyEvent(mask: FanotifyGroup.Events.openExecPermission.rawValue, fd: fd, pid: 1), receivedAt: 0)
        }
        #expect(PermissionRequest.droppedUnanswered.load(ordering: .relaxed) == before + 1)
        PermissionRequest.droppedUnanswered.wrappingAdd(-1, ordering: .relaxed)
    }

    @Test func eachRequestIsAnsweredExactlyOnceAndItsDescriptorClosed() throws {
        let dropped = PermissionRequest.droppedUnanswered.load(ordering: .relaxed)
        let p = try Pipeline(mode: .enforce)
        var descriptors: [Int32] = []
        for i in 0..<20 {
            let r = p.request(exec: i % 2 == 0, key: i % 3 == 0 ? nil : userWritable(UInt64(100 + i), size: 99))
            descriptors.append(r.descriptor)
            p.decide(r)
        }
        let answered = p.kernel.answers.map(\.fd)
        #expect(answered.count == 20 && Set(answered).count <= 20)
        // The descriptor numbers come back for reuse only once closed: each answered one is closed.
        for fd in descriptors { #expect(fcntl(fd, F_GETFD) == -1 || descriptors.filter { $0 == fd }.count > 1) }
        #expect(PermissionRequest.droppedUnanswered.load(ordering: .relaxed) == dropped)
    }

    @Test func aRevocationWhileMarkingFlushesTheKernelCache() throws {
        let p = try Pipeline(mode: .enforce)
        let key = rootOnly(20)
        // The verdict was made under a policy that allowed the content; by the time of the mark, a reload revoked it.
        let stale = Triage.Answer(verdict: Verdict(Decision(allow: true, reason: .known), serial: 1, mode: .enforce, layer: .digest),
                                  digest: p.unknown, key: key)
        p.responder.finish(p.request(exec: true, key: key), stale)
        #expect(p.kernel.marks.count == 1)
        #expect(p.kernel.flushes == 1, "a mark placed for content the policy in force does not allow is flushed at once")
    }

    @Test func notableOutcomesAreRecordedWithTheVerdictsSerialAndMode() throws {
        let p = try Pipeline(mode: .monitor)
        p.decide(p.request(exec: true, key: userWritable(21, size: 13)).self, shuttingDown: false)
        // A miss is hashed elsewhere; give the responder the verdict the hash pool would.
        p.responder.finish(p.request(exec: true, key: userWritable(22)), Triage.Answer(verdict: p.policy.decide(p.unknown), digest: p.unknown, key: userWritable(22)))
        let records = p.sink.records.withLock { $0 }
        #expect(records.map(\.outcome) == [.wouldDeny])
        #expect(records.first?.serial == 1 && records.first?.mode == .monitor && records.first?.digest == p.unknown)
    }

    /// A denied process often exits within microseconds of the answer: what the record says about it must be
    /// read while the answer still holds it. The fake kernel kills and reaps the process as it is answered.
    @Test func processDetailsOfDenialsAreReadBeforeTheAnswer() throws {
        let p = try Pipeline(mode: .enforce)
        let child = Foundation.Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["30"]
        try child.run()
        let pid = child.processIdentifier
        final class KillingResponder: PermissionResponder, @unchecked Sendable {
            let pid: Int32
            let child: Foundation.Process
            init(pid: Int32, child: Foundation.Process) { self.pid = pid; self.child = child }
            func respond(to eventDescriptor: Int32, allow: Bool) throws(Errno) { kill(pid, SIGKILL); child.waitUntilExit() }
            func ignoreInode(of eventDescriptor: Int32, events: FanotifyGroup.Events) throws(Errno) {}
            func flushInodeMarks() throws(Errno) {}
        }
        let responder = Responder(responder: KillingResponder(pid: pid, child: child), kernelCache: p.kernelCache, policy: p.policy,
                                  learned: p.learned, events: p.sink, statistics: p.statistics, logAllows: false, facts: p.facts,
                                  caches: p.caches, log: { _ in })
        let key = userWritable(30)
        responder.finish(p.request(exec: true, pid: pid, key: key), Triage.Answer(verdict: p.policy.decide(p.unknown), digest: p.unknown, key: key))
        let record = p.sink.records.withLock { $0.first }
        #expect(record?.outcome == .deny)
        #expect(record?.process.comm == "sleep", "the process was read after it was released")
        #expect(record?.process.exe == "/usr/bin/sleep" || record?.process.exe == "/bin/sleep")
    }

    @Test func learnModeRecordsEachNewContentOnce() throws {
        let p = try Pipeline(mode: .learn)
        let file = p.dir.file("new-program")
        try p.dir.write("new-program", Array("#!/bin/sh\necho new\n".utf8), mode: 0o755)
        for _ in 0..<2 {
            let fd = open(file, O_RDONLY | O_CLOEXEC)
            let r = PermissionRequest(FanotifyEvent(mask: FanotifyGroup.Events.openExecPermission.rawValue, fd: fd, pid: 100), receivedAt: 0)
            p.responder.finish(r, Triage.Answer(verdict: p.policy.decide(p.unknown), digest: p.unknown, key: userWritable(23)))
        }
        #expect(p.sink.outcomes == [.learned])
        #expect(p.learned.count == 1)
    }
}

@Suite struct HashPoolTests {
    @Test func aMissIsHashedOnceForEveryWaiterAndDecidedByThePolicy() throws {
        let content = Array("extra allowed!".utf8)
        let digest = SHA256Digest.of(content)
        let p = try Pipeline(mode: .enforce, extraAllows: [(digest, UInt64(content.count))])
        try p.dir.write("allowed", content)
        try p.dir.write("unknown", Array("something else".utf8))
        let pool = HashPool(policy: p.policy, caches: p.caches, responder: p.responder, statistics: p.statistics, triage: p.triage,
                            facts: p.facts, leases: LeaseKeeper(statistics: p.statistics), workers: 2)
        pool.start()
        defer { pool.stop() }
        var waiting: [Int32: Bool] = [:]
        for (name, allowed) in [("allowed", true), ("allowed", true), ("unknown", false)] {
            let fd = open(p.dir.file(name), O_RDONLY | O_CLOEXEC)
            let id = try FileDescriptor(rawValue: fd).identity()
            waiting[fd] = allowed
            pool.enqueue(PermissionRequest(FanotifyEvent(mask: FanotifyGroup.Events.openExecPermission.rawValue, fd: fd, pid: 100),
                                           receivedAt: monotonicNanoseconds()), key: FileKey(id))
        }
        // Wait for the acknowledged state (every request answered), not for a fixed time.
        let deadline = monotonicSeconds() + 30
        while p.kernel.answers.count < 3 && monotonicSeconds() < deadline { usleep(1000) }
        let answers = p.kernel.answers
        #expect(answers.count == 3)
        for a in answers { #expect(waiting[a.fd] == a.allow) }
        #expect(p.statistics[.hashesComputed] <= 3 && p.statistics[.hashesInFlight] == 0)
    }
}

@Suite struct BoundsTests {
    @Test func everyCacheStaysBounded() {
        var cache = BoundedCache<Int, Int>(limit: 100)
        for i in 0..<10_000 { cache.insert(i, for: i) }
        #expect(cache.count <= 100)
        #expect(cache[9_999] == 9_999, "the newest entry survives a reset")
        let caches = DecisionCaches()
        #expect(caches.digests.withLock { $0.limit } == DecisionCaches.digestLimit)
        #expect(caches.lastExec.withLock { $0.limit } == DecisionCaches.lastExecLimit)
        #expect(caches.contentClasses.withLock { $0.limit } == DecisionCaches.smallLimit)
        #expect(caches.execDigests.withLock { $0.limit } == DecisionCaches.smallLimit)
    }

    @Test func thePrehashQueueDropsWhenFullAndCountsIt() throws {
        let statistics = Statistics()
        let prehasher = Prehasher(caches: DecisionCaches(), statistics: statistics)   // not started: nothing drains it
        for _ in 0..<(Prehasher.queueLimit + 5) { prehasher.submit(descriptor: open("/dev/null", O_RDONLY | O_CLOEXEC)) }
        #expect(statistics[.prehashDropped] == 5)
        prehasher.stop()
    }
}

@Suite struct ControlPlaneTests {
    @Test func requestsRoundTripAndBadOnesGetOneLineErrors() throws {
        for request in [ControlRequest.status(json: true), .status(json: false), .setMode(.learn), .reload] {
            #expect(try ControlRequest(line: request.line) == request)
        }
        #expect(throws: ControlReply.self) { try ControlRequest(line: "mode sleep") }
        #expect(throws: ControlReply.self) { try ControlRequest(line: "shutdown") }
        let reply = ControlReply.ok("ready", body: "mode: enforce")
        #expect(ControlReply(wire: reply.wire) == reply)
        #expect(ControlReply(wire: ControlReply.error("no policy").wire) == .error("no policy"))
    }

    @Test func oneCounterTableDrivesStatusAndPrometheus() throws {
        let statistics = Statistics()
        statistics.add(.denied, 3)
        statistics.add(.cacheHits)
        let fields = StatusReport.counterFields(statistics, execsCounted: false)
        #expect(fields.count == Counter.allCases.count)
        #expect(fields.first { $0.name == "denied" }?.value == .int(3))
        #expect(fields.first { $0.name == "execs_seen" }?.value == .unknownCount)
        let text = StatusReport.prometheusText(statistics, execsCounted: false, gauges: [])
        #expect(text.contains("appctl_decisions_total{decision=\"deny\"} 3\n"))
        #expect(text.components(separatedBy: "# TYPE appctl_decisions_total counter").count == 2, "one TYPE line per metric")
        #expect(!text.contains("appctl_execs_total"))
        let report = StatusReport(ready: true, fields: fields)
        #expect(report.json.hasPrefix("{\"allowed\":0,\"denied\":3"))
        #expect(report.text.contains("cache hits:"))
    }

    @Test func modeIsParsedOneWayEverywhere() throws {
        var configuration = DaemonConfiguration()
        try configuration.apply(file: "c", text: "mode = learn\n")
        #expect(configuration.mode == .learn)
        #expect(throws: DaemonConfiguration.ParseError.self) { try configuration.apply(file: "c", text: "mode = lurk\n") }
        #expect(Mode.choices == "enforce, monitor, learn")
    }
}

@Suite struct HardeningTests {
    /// Issue 10, case 8: a sysctl the kernel lacks (vm.memfd_noexec before Linux 6.3) is reported, not skipped silently.
    @Test func aMissingSysctlIsAHardeningFailure() throws {
        let dir = TemporaryDirectory("appctl-sysctl")
        defer { dir.remove() }
        let missing = SysctlGuard(name: "vm.appctl_no_such_knob", enforcedValue: "2", stateDirectory: dir.path, why: "test")
        var lines: [String] = []
        missing.engage { lines.append($0) }
        #expect(missing.failure.withLock { $0 } == "vm.appctl_no_such_knob: not available on this kernel")
        #expect(lines.count == 1 && lines[0].contains("WARNING") && lines[0].contains("not covered"))
        #expect(missing.active == nil)
    }

    @Test func confinementKeepsWhatTheHardeningNeeds() {
        #expect(ConfinementProfile.keptCapabilities.contains { $0.rawValue == Confinement.Capability.sysResource.rawValue })
    }
}
