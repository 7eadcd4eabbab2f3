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

// The fakes the pipeline tests use instead of the kernel: a recording responder, fixed file facts, a collecting
// event sink, and a pipeline around a real signed policy.

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
    var paths: [Int32: String] = [:]
    func identity(of descriptor: Int32) -> FileKey? { identities[descriptor] }
    func contentClass(of descriptor: Int32) -> ContentClass { classes[descriptor] ?? .other }
    func isELFProgram(of descriptor: Int32) -> Bool { classes[descriptor] == .elf }
    func interpreter(of pid: Int32, executableDigest: (FileKey) -> SHA256Digest?) -> InterpreterFamily? { interpreters[pid] }
    func opensAsProgram(pid: Int32, family: InterpreterFamily, key: FileKey, descriptor: Int32) -> Bool { programs.contains(descriptor) }
    func verityDigest(of descriptor: Int32) -> SHA256Digest? { verity[descriptor] }
    func path(of descriptor: Int32, ifUnder rule: RootDataPaths) -> String? { paths[descriptor].flatMap { rule.contains($0) ? $0 : nil } }
    var programFamilies: [SHA256Digest: InterpreterFamily] = [:]
    var threadSubjects: [Int32: ProcessSubjects] = [:]
    var inlineThreads: Set<Int32> = []
    func interpreterFamily(ofProgram digest: SHA256Digest, key: FileKey) -> InterpreterFamily? { programFamilies[digest] }
    func subjects(of tid: Int32, services: Bool, users: Bool) -> ProcessSubjects? { threadSubjects[tid] ?? ProcessSubjects(services: [], uids: [1000]) }
    func execTakesInlineCode(tid: Int32, key: FileKey, family: InterpreterFamily, scriptBefore: FileKey?) -> Bool { inlineThreads.contains(tid) }
    func loaderRunTakesInlineCode(pid: Int32, family: InterpreterFamily) -> Bool { inlineThreads.contains(pid) }
    var loaderRuns: Set<Int32> = []
    func runsWithoutInterpreter(pid: Int32) -> Bool { loaderRuns.contains(pid) }
    func runsLoaderItself(pid: Int32) -> Bool { loaderRuns.contains(pid) }
    func isLoaderProgram(pid: Int32, key: FileKey) -> Bool? { nil }
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
    lazy var triage = Triage(policy: policy, caches: caches, facts: facts, statistics: statistics, ownPID: 4242, kernelCache: true,
                             rootDataPaths: RootDataPaths(RootDataPaths.defaults))

    init(mode: Mode, allowSizes: [UInt64] = [13], extraAllows: [(SHA256Digest, UInt64)] = [], profiles: [ProfileRule] = []) throws {
        keys = try TestKeys(in: dir)
        policy = PolicyState(mode: mode, stateDirectory: dir.file("state"), hostname: "test")
        var allows = [AllowEntry(digest: known, size: allowSizes[0], kind: .elfExec, origin: .manual, path: Array("/known".utf8))]
        for (digest, size) in extraAllows { allows.append(AllowEntry(digest: digest, size: size, kind: .script, origin: .manual, path: Array("/extra".utf8))) }
        var header = PolicyHeader(serial: 1, issued: .now, keyID: keys.publicKey.keyID)
        header.profiles = profiles
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

/// Owned by root and writable by root only; `private` also readable by root only.
func rootOnly(_ inode: UInt64, size: Int64 = 13, verity: Bool = false, private: Bool = false) -> FileKey {
    FileKey(device: 1, inode: inode, changeTime: 7, size: size, isVerity: verity, onlyRootCanWrite: true, onlyRootCanRead: `private`)
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

