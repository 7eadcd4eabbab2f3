@testable import AppctlDaemon
import AppctlCore
import AppctlKernel
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Execution profiles on the event path, with fake facts: who the process is, whether its program is an
/// interpreter and whether its command line is inline code (issue 15).
@Suite struct ProfileGateTests {
    static let extra = SHA256Digest.of(Array("an interpreter".utf8))

    func pipeline(_ mode: Mode) throws -> Pipeline {
        let p = try Pipeline(mode: mode, extraAllows: [(Self.extra, 13)], profiles: [
            ProfileRule(subject: .service("web.service"), program: .digest(Self.extra), inline: false),
            ProfileRule(subject: .service("admin.service"), program: .digest(Self.extra), inline: true),
        ])
        p.facts.programFamilies[Self.extra] = .shell
        p.facts.threadSubjects[501] = ProcessSubjects(services: ["web.service"], uids: [33])
        p.facts.threadSubjects[502] = ProcessSubjects(services: ["admin.service"], uids: [0])
        p.facts.threadSubjects[503] = ProcessSubjects(services: ["cron.service"], uids: [0])
        return p
    }

    @Test func aProgramOutsideTheProfileIsDeniedForThatServiceOnly() throws {
        let p = try pipeline(.enforce)
        p.caches.remember(p.known, for: rootOnly(60))
        #expect(p.decide(p.request(exec: true, pid: 501, key: rootOnly(60))).allows == true, "the policy allows it; the profile decides in the responder")
        #expect(p.kernel.answers.last?.allow == false)
        let record = try #require(p.sink.records.withLock { $0.last })
        #expect(record.reason == .notInProfile && record.subject == "service=web.service" && record.outcome == .deny)
        p.decide(p.request(exec: true, pid: 503, key: rootOnly(60)))
        #expect(p.kernel.answers.last?.allow == true, "a service without a profile: the policy alone")
        // Excluded by a profile: its exec verdict must not stay in the kernel (opens may).
        #expect(p.kernel.marks.last.map { $0.events == [.openPermission] } == true, "\(p.kernel.marks)")
        #expect(p.statistics.profileDenials.map(\.subject) == ["service=web.service"])
    }

    @Test func inlineCodeIsDeniedWhereTheProfileSaysNoInline() throws {
        let p = try pipeline(.enforce)
        p.caches.remember(Self.extra, for: rootOnly(61))
        p.facts.inlineThreads = [501, 502]
        p.decide(p.request(exec: true, pid: 501, key: rootOnly(61)))
        #expect(p.kernel.answers.last?.allow == false)
        #expect(p.sink.records.withLock { $0.last?.reason } == .inlineCode)
        p.decide(p.request(exec: true, pid: 502, key: rootOnly(61)))
        #expect(p.kernel.answers.last?.allow == true, "admin's profile lets sh take inline code")
        p.facts.inlineThreads = []
        p.decide(p.request(exec: true, pid: 501, key: rootOnly(61)))
        #expect(p.kernel.answers.last?.allow == true, "web runs sh with a script file")
        // Read where a profile forbids inline code (web, twice); admin's allows it, so its command line is never read.
        #expect(p.statistics[.profileCommandLineChecks] == 2)
    }

    @Test func monitorModeReportsProfileMissesAsWouldDenyAndLearnModeRecordsThem() throws {
        let p = try pipeline(.monitor)
        p.caches.remember(p.known, for: rootOnly(62))
        p.decide(p.request(exec: true, pid: 501, key: rootOnly(62)))
        #expect(p.kernel.answers.last?.allow == true)
        let record = try #require(p.sink.records.withLock { $0.last })
        #expect(record.outcome == .wouldDeny && record.reason == .notInProfile && record.subject == "service=web.service")

        let l = try pipeline(.learn)
        l.caches.remember(Self.extra, for: rootOnly(63))
        l.facts.inlineThreads = [503]
        l.decide(l.request(exec: true, pid: 503, key: rootOnly(63)))
        #expect(l.kernel.answers.last?.allow == true)
        #expect(l.learned.profileRules.contains { $0.subject == .service("cron.service") && $0.program == .digest(Self.extra) && $0.inline })
        // While learning no exec verdict stays in the kernel: every exec must be seen.
        #expect(l.kernel.marks.allSatisfy { !$0.events.contains(.openExecPermission) })
    }

    @Test func onlyAnAllowedScriptExecIsRememberedForTheInterpreterThatFollows() throws {
        let p = try pipeline(.enforce)
        p.caches.remember(Self.extra, for: rootOnly(64))
        p.caches.remember(p.known, for: rootOnly(65))
        // A #! script web's profile does not list: denied, and not remembered (a stale record once let a later,
        // unrelated exec of the interpreter pass for the script's).
        p.decide(p.request(exec: true, pid: 501, key: rootOnly(65), contentClass: .shebang))
        #expect(p.kernel.answers.last?.allow == false)
        #expect(p.caches.scriptExecs.withLock { $0[501] } == nil)
        // Allowed (cron.service has no profile): remembered, then taken by the next exec event of the thread.
        p.decide(p.request(exec: true, pid: 503, key: rootOnly(65), contentClass: .shebang))
        #expect(p.caches.scriptExecs.withLock { $0[503] } == rootOnly(65))
        p.decide(p.request(exec: true, pid: 503, key: rootOnly(64)))
        #expect(p.caches.scriptExecs.withLock { $0[503] } == nil, "taken once")
    }

    @Test func theLoaderIsJudgedByTheProgramItLoadsNotByItsOwnExec() throws {
        let loader = SHA256Digest.of(Array("ld.so".utf8))
        let p = try Pipeline(mode: .enforce, extraAllows: [(loader, 13)], profiles: [
            ProfileRule(subject: .service("web.service"), program: .digest(Self.extra), inline: false),
        ])
        p.facts.programFamilies[loader] = .loader
        p.facts.threadSubjects[501] = ProcessSubjects(services: ["web.service"], uids: [33])
        p.caches.remember(loader, for: rootOnly(70))
        // Its exec (PT_INTERP for every dynamic program, or run directly) is not the subject's choice: allowed, cached.
        p.decide(p.request(exec: true, pid: 501, key: rootOnly(70)))
        #expect(p.kernel.answers.last?.allow == true)
        #expect(p.kernel.marks.last.map { $0.events == [.openExecPermission, .openPermission] } == true)
        // A process running the loader (AT_BASE 0) opens `known`, a program web's profile does not list: judged as its start.
        p.facts.loaderRuns = [501]
        p.caches.remember(p.known, for: rootOnly(71))
        let open = p.request(exec: false, pid: 501, key: rootOnly(71), contentClass: .elf)
        p.decide(open)
        #expect(p.kernel.answers.last?.allow == false)
        #expect(p.sink.records.withLock { $0.last?.reason } == .notInProfile)
    }

    /// `package:` follows a package through apt upgrades: the base's entries of that package, and the files of the
    /// packages of that name an apt overlay the policy trusts installed; never one the policy's rules do not trust.
    @Test func aPackageProgramCoversTheBaseAndTheTrustedOverlayOnly() {
        let debian = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8", other = "0123456789ABCDEF0123456789ABCDEF01234567"
        let learned = SHA256Digest.of(Array("jq 1.6".utf8)), upgraded = SHA256Digest.of(Array("jq 1.7".utf8)), foreign = SHA256Digest.of(Array("jq elsewhere".utf8))
        var header = PolicyHeader(serial: 1, issued: .now)
        header.aptSources = [AptSourceRule(signer: debian, mode: .auto)]
        header.profiles = [ProfileRule(subject: .service("web.service"), program: .package("jq"), inline: false)]
        var policy = LoadedPolicy(header: header, allowed: DigestSet([learned]), denied: DigestSet([]), path: "p", isSigned: true)
        policy.packagePrograms = ["jq": [learned]]
        func package(_ signer: String, _ digest: SHA256Digest) -> OverlayPackage {
            OverlayPackage(name: "jq", version: "1.7", architecture: "amd64", debDigest: digest, signer: signer, origin: "Debian", suite: "stable",
                           codename: "bookworm", files: [OverlayFile(digest: digest, size: 1, kind: .elfExec, escapedPath: "/usr/bin/jq")])
        }
        let table = PolicyState.compileProfiles(policy, overlays: [Overlay(layer: "apt", packages: [package(debian, upgraded), package(other, foreign)])])
        let web = ProcessSubjects(services: ["web.service"], uids: [])
        #expect(table.check(learned, subjects: web) == .admitted(inlineForbiddenBy: "service=web.service"))
        #expect(table.check(upgraded, subjects: web) == .admitted(inlineForbiddenBy: "service=web.service"), "the upgrade apt installed")
        #expect(table.check(foreign, subjects: web) == .notInProfile(subject: "service=web.service"), "a package of that name nothing trusts")
    }

    /// Learning runs for days: past its bound new (subject, program) pairs are counted as dropped, never stored.
    @Test func learningIsBounded() {
        let statistics = Statistics()
        let recorder = LearnRecorder(hostname: "test", statistics: statistics)
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        for i in 0..<(LearnRecorder.profileLimit + 10) {
            recorder.recordProfile(services: ["web.service"], users: [], digest: SHA256Digest.of(Array("program \(i)".utf8)), inline: false, fd: fd)
        }
        #expect(recorder.profileEntryCount == LearnRecorder.profileLimit)
        #expect(statistics[.profileEntriesDropped] == 10 && statistics[.profileEntriesLearned] == LearnRecorder.profileLimit)
        // A pair seen before costs a lookup and changes nothing, unless it now took inline code.
        recorder.recordProfile(services: ["web.service"], users: [], digest: SHA256Digest.of(Array("program 0".utf8)), inline: true, fd: fd)
        #expect(recorder.profileRules.first { $0.program == .digest(SHA256Digest.of(Array("program 0".utf8))) }?.inline == true)
    }
}

