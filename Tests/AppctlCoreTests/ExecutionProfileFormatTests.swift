import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

private func digest(_ seed: String) -> SHA256Digest { SHA256Digest.of(Array(seed.utf8)) }

/// Format version 6: `profile` header lines, and the compiled `ProfileTable` the daemon decides with.
@Suite struct ExecutionProfileFormatTests {
    let web = Subject.service("web.service"), admin = Subject.service("admin.service")

    func rules() -> [ProfileRule] {
        [
            ProfileRule(subject: web, program: .digest(digest("php")), inline: false, escapedPath: "/usr/sbin/php-fpm8.2"),
            ProfileRule(subject: web, program: .digest(digest("sh")), inline: false, escapedPath: "/usr/bin/dash"),
            ProfileRule(subject: admin, program: .digest(digest("sh")), inline: true, escapedPath: "/usr/bin/dash"),
            ProfileRule(subject: .user("www-data"), program: .package("coreutils"), inline: false),
        ]
    }

    @Test func profilesRoundTripAsVersion6AndSigned() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        var header = PolicyHeader(serial: 3, issued: .now, keyID: keys.publicKey.keyID)
        header.profiles = rules()   // unsorted on purpose: the writer puts them in canonical order
        let allows = [AllowEntry(digest: digest("sh"), size: 1, kind: .elfExec, origin: .dpkg(package: "coreutils"), path: Array("/usr/bin/dash".utf8))]
        try PolicyWriter.write(path: dir.file("p.txt"), header: header, allows: allows, denies: [], signingKey: keys.privateKey)
        let text = String(decoding: try dir.read("p.txt"), as: UTF8.self)
        #expect(text.hasPrefix("appctl-policy 6\n"))
        let lines = text.split(separator: "\n").filter { $0.hasPrefix("profile ") }.map(String.init)
        #expect(lines == lines.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) } && lines.count == 4)
        #expect(lines.contains("profile service=admin.service sha256:\(digest("sh").hex) inline /usr/bin/dash"))
        #expect(lines.contains("profile user=www-data package:coreutils no-inline -"))
        let loaded = try LoadedPolicy.load(path: dir.file("p.txt"), key: keys.publicKey)
        #expect(Set(loaded.header.profiles) == Set(rules()))
        #expect(loaded.packagePrograms["coreutils"] == [digest("sh")])
        // Without profiles the same policy is written as an older version: one spelling per policy.
        header.profiles = []
        try PolicyWriter.write(path: dir.file("q.txt"), header: header, allows: allows, denies: [], signingKey: keys.privateKey)
        #expect(String(decoding: try dir.read("q.txt"), as: UTF8.self).hasPrefix("appctl-policy 1\n"))
    }

    @Test func malformedProfileLinesAreRefusedWithTheirLine() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let sh = digest("sh").hex
        let cases: [(String, String)] = [
            ("profile service=web sha256:\(sh) inline -", "unit name"),
            ("profile service=web.service sha256:\(sh.uppercased()) inline -", "64 lowercase hex"),
            ("profile service=web.service sha256:\(sh) maybe -", "inline or no-inline"),
            ("profile group=adm sha256:\(sh) inline -", "a subject is"),
            ("profile user=Root sha256:\(sh) inline -", "user name"),
            ("profile service=web.service package:X inline -", "Debian package name"),
            ("profile service=web.service sha256:\(sh) inline", "expected"),
        ]
        for (line, why) in cases {
            try dir.write("bad.txt", "appctl-policy 6\nissued 2026-12-07T00:00:00Z\n\(line)\nallow-count 0\ndeny-count 0\n")
            do {
                _ = try PolicyReader(path: dir.file("bad.txt")).read()
                Issue.record("accepted: \(line)")
            } catch {
                #expect(error.description.contains(":3:") && error.description.contains(why), "\(line): \(error.description)")
            }
        }
        // Out of order, repeated, in an older version, or a version 6 file without any.
        let a = "profile service=a.service sha256:\(sh) inline -", b = "profile service=b.service sha256:\(sh) inline -"
        for (body, version, why) in [("\(b)\n\(a)", 6, "order"), ("\(a)\n\(a)", 6, "two profile lines"), (a, 5, "version 6"), ("", 6, "no profile line")] {
            try dir.write("bad.txt", "appctl-policy \(version)\nissued 2026-12-07T00:00:00Z\n\(body.isEmpty ? "" : body + "\n")allow-count 0\ndeny-count 0\n")
            #expect(throws: PolicyError.self) { _ = try PolicyReader(path: dir.file("bad.txt")).read() }
            do { _ = try PolicyReader(path: dir.file("bad.txt")).read() } catch { #expect(error.description.contains(why), "\(error.description)") }
        }
    }

    @Test func subjectsComeFromEveryUnitOfTheCgroupPath() {
        #expect(Subject.services(inCgroupPath: Array("/system.slice/nginx.service".utf8)) == ["nginx.service"])
        #expect(Subject.services(inCgroupPath: Array("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope".utf8)) == ["user@1000.service", "foo.scope"])
        #expect(Subject.services(inCgroupPath: Array("/".utf8)).isEmpty)
        #expect(Subject.services(inCgroupPath: Array("/system.slice/.service/x.slice".utf8)).isEmpty, "a bare suffix names no unit")
    }

    @Test func aProfileAdmitsOnlyWhatItListsAndEveryApplicableProfileMustAgree() {
        let table = ProfileTable(rules: rules(), packageDigests: { $0 == "coreutils" ? [digest("ls"), digest("sh")] : [] }, uid: { $0 == "www-data" ? 33 : nil })
        let inWeb = ProcessSubjects(services: ["web.service"], uids: [1000])
        #expect(table.check(digest("php"), subjects: inWeb) == .admitted(inlineForbiddenBy: "service=web.service"))
        #expect(table.check(digest("dd"), subjects: inWeb) == .notInProfile(subject: "service=web.service"))
        #expect(table.check(digest("sh"), subjects: ProcessSubjects(services: ["admin.service"], uids: [0])) == .admitted(inlineForbiddenBy: nil))
        #expect(table.check(digest("dd"), subjects: ProcessSubjects(services: ["cron.service"], uids: [0])) == .unprofiled)
        // Nested: admin.service inside web.service is governed by both (a delegated subtree cannot widen).
        #expect(table.check(digest("php"), subjects: ProcessSubjects(services: ["web.service", "admin.service"], uids: [])) == .notInProfile(subject: "service=admin.service"))
        #expect(table.check(digest("sh"), subjects: ProcessSubjects(services: ["web.service", "admin.service"], uids: [])) == .admitted(inlineForbiddenBy: "service=web.service"))
        // A user profile by package; a uid that is the real or the effective one counts.
        #expect(table.check(digest("ls"), subjects: ProcessSubjects(services: [], uids: [33])) == .admitted(inlineForbiddenBy: "user=www-data"))
        #expect(table.check(digest("php"), subjects: ProcessSubjects(services: [], uids: [0, 33])) == .notInProfile(subject: "user=www-data"))
        // Only what every profile lists, inline included for interpreters, may stay in the kernel's cache.
        #expect(table.sameForEveryProcess(digest("sh"), isInterpreter: false))
        #expect(!table.sameForEveryProcess(digest("sh"), isInterpreter: true))
        #expect(!table.sameForEveryProcess(digest("php"), isInterpreter: false))
        #expect(ProfileTable().sameForEveryProcess(digest("anything"), isInterpreter: true))
    }

    @Test func usersNotOnTheHostAreReportedNotGuessed() {
        let table = ProfileTable(rules: rules(), packageDigests: { _ in [] }, uid: { _ in nil })
        #expect(table.unresolvedUsers == ["www-data"])
        #expect(table.check(digest("php"), subjects: ProcessSubjects(services: [], uids: [33])) == .unprofiled)
        #expect(passwdUIDs("root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nbroken\n") == ["root": 0, "www-data": 33])
    }

    @Test func mergingLearnedRulesKeepsOneLinePerSubjectAndProgram() {
        let a = ProfileRule(subject: web, program: .digest(digest("sh")), inline: false, escapedPath: "/bin/sh")
        var b = a
        b.inline = true
        b.escapedPath = "/usr/bin/dash"
        #expect(ProfileRule.merged([a, b, a]) == [ProfileRule(subject: web, program: .digest(digest("sh")), inline: true, escapedPath: "/bin/sh")])
    }
}
