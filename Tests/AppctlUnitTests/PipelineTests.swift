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

    @Test func plainDataOpensAreInertAndOnlyDataNobodyElseCanReadIsCachedInTheKernel() throws {
        let p = try Pipeline(mode: .enforce)
        #expect(p.decide(p.request(exec: false, key: rootOnly(2, private: true))) == .inert(markInKernel: rootOnly(2, private: true)))
        // Issue 10, case 5: a mark answers every later opener, and an interpreter handed a readable root-owned log as
        // its program must still be asked.
        #expect(p.decide(p.request(exec: false, key: rootOnly(8))) == .inert(markInKernel: nil))
        #expect(p.decide(p.request(exec: false, key: userWritable(3))) == .inert(markInKernel: nil))
        #expect(p.kernel.answers.map(\.allow) == [true, true, true])
        #expect(p.kernel.marks.count == 1 && p.kernel.marks[0].events == [.openPermission])
        #expect(p.statistics[.inertOpens] == 3 && p.sink.outcomes.isEmpty)
        // Its content class is remembered, so the next open of it costs a lookup, not a read.
        #expect(p.caches.contentClasses.withLock { $0[rootOnly(8)] } == .other)
        // Root's own content that no user's input reaches (`kernel-cache-data-under`: /usr/ and the loader's cache by
        // default) is cached although others can read it; a root-owned log elsewhere is not, nor a deleted file.
        for (inode, path, cached) in [(30, "/usr/share/zoneinfo/UTC", true), (31, "/etc/ld.so.cache", true), (32, "/var/log/syslog", false),
                                      (33, "/etc/ld.so.cache.old", false), (34, "/usr/lib/x (deleted)", false), (35, "/usr", false)] {
            let request = p.request(exec: false, key: rootOnly(UInt64(inode)))
            p.facts.paths[request.descriptor] = path
            #expect(p.decide(request) == .inert(markInKernel: cached ? rootOnly(UInt64(inode)) : nil), "\(path)")
        }
        // `/` takes every root-only file (the documented risk).
        let everything = Triage(policy: p.policy, caches: DecisionCaches(), facts: p.facts, statistics: p.statistics, ownPID: 4242,
                                kernelCache: true, rootDataPaths: RootDataPaths(["/"]))
        let request = p.request(exec: false, key: rootOnly(36))
        p.facts.paths[request.descriptor] = "/var/log/syslog"
        #expect(everything.triage(request) == .inert(markInKernel: rootOnly(36)))
        request.answer(allow: true, via: RecordingResponder())
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

