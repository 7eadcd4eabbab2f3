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

// The daemon's responder, hash pool, bounds, control plane and hardening, with a fake kernel: no root, no
// fanotify. The real-kernel behaviour is pinned by AppctlIntegrationTests.

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
        for i in 0..<20 {
            // Unreadable (no identity) or denied by size: every one is answered here, on the caller's thread.
            // Each request's descriptor is a file of its own (kept until the check): once it is closed, anything may
            // take the same descriptor number (other tests run in parallel), but not that inode.
            let fd = open(p.dir.file("request-\(i)"), O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
            var opened = stat()
            #expect(fd >= 0 && fstat(fd, &opened) == 0)
            if i % 3 != 0 { p.facts.identities[fd] = userWritable(UInt64(100 + i), size: 99) }
            p.facts.classes[fd] = .other
            let mask = i % 2 == 0 ? FanotifyGroup.Events.openExecPermission.rawValue : FanotifyGroup.Events.openPermission.rawValue
            p.decide(PermissionRequest(FanotifyEvent(mask: mask, fd: fd, pid: 100), receivedAt: monotonicNanoseconds()))
            #expect(p.kernel.answers.count == i + 1, "request \(i) answered \(p.kernel.answers.count - i) times")
            #expect(p.kernel.answers.last?.fd == fd)
            var now = stat()
            let stillOpen = fstat(fd, &now) == 0 && now.st_dev == opened.st_dev && now.st_ino == opened.st_ino
            #expect(!stillOpen, "request \(i)'s descriptor is still open after its answer")
        }
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
        // One hash per file (two files); a second for the allowed one only when its second request came after the first hash.
        #expect((2...3).contains(p.statistics[.hashesComputed]) && p.statistics[.hashesInFlight] == 0)
    }
}

@Suite struct EventRecordTests {
    /// Paths and process names are the attacker's choice: on stderr they are escaped, so a newline in a file name
    /// cannot forge a log line of its own (SECURITY.md).
    @Test func humanLinesEscapeWhatTheAttackerNamed() {
        var process = ProcessSnapshot(pid: getpid())
        process.comm = "evil\nappctl: ALLOW x"
        let record = EventRecord(time: "t", outcome: .deny, reason: .unknown, path: "/tmp/a\nappctl: ALLOW /bin/sh",
                                 digest: nil, size: 1, device: 0, inode: 0, pid: 1, process: process, serial: 1, mode: .enforce)
        let line = record.humanLine
        #expect(line.filter { $0 == "\n" }.count == 1 && line.hasSuffix("\n"), "\(line)")
        #expect(line.contains("/tmp/a%0aappctl: ALLOW /bin/sh") && line.contains("comm evil%0aappctl: ALLOW x"), "\(line)")
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

@Suite struct LeaseKeeperTests {
    /// Review finding: a process whose main thread exited has no `/proc/PID/exe`, yet its other threads live (and
    /// one may be in the middle of an exec). It is not gone, and its threads' executables are still readable.
    @Test func aProcessWhoseMainThreadExitedIsNotGone() throws {
        let dir = TemporaryDirectory("appctl-lease"); defer { dir.remove() }
        try dir.write("zl.c", """
            #include <pthread.h>
            #include <unistd.h>
            static void *sleeper(void *arg) { (void)arg; sleep(600); return 0; }
            int main(void) { pthread_t t; pthread_create(&t, 0, sleeper, 0); pthread_exit(0); }
            """)
        let program = dir.file("zl")
        let cc = try run("/usr/bin/cc", ["-pthread", "-o", program, dir.file("zl.c")])
        #expect(cc.status == 0, "\(cc.stderr)")
        let child = Foundation.Process()
        child.executableURL = URL(fileURLWithPath: program)
        try child.run()
        let pid = child.processIdentifier
        defer { kill(pid, SIGKILL); child.waitUntilExit() }   // by its PID: our own child
        let id = try fileIdentity(program)
        // Wait for the acknowledged state: the main thread is gone (exe unreadable), the process is not. (The other
        // thread sleeps for 10 minutes and is killed at the end: the process must not be exiting while it is looked at.)
        let deadline = monotonicSeconds() + 60
        while (try? fileIdentity("/proc/\(pid)/exe")) != nil && monotonicSeconds() < deadline { usleep(1000) }
        #expect((try? fileIdentity("/proc/\(pid)/exe")) == nil, "the main thread did not exit")
        #expect((try? fileIdentity("/proc/\(pid)")) != nil, "the process must not look gone")
        #expect(LeaseKeeper.anyThread(of: pid, runs: id.device, id.inode), "a live thread's executable is found")
        // Its thread sleeps (nanosleep): no exec is in progress, so a lease for a failed exec would be let go. (Until
        // it is in nanosleep, a thread still on a CPU reads as "running", which counts as maybe in exec: wait for that.)
        let asleep = monotonicSeconds() + 60
        while LeaseKeeper.anyThreadInExec(of: pid) && monotonicSeconds() < asleep { usleep(1000) }
        #expect(!LeaseKeeper.anyThreadInExec(of: pid))
    }
}
