import AppctlCore
import AppctlKernel
import AppctlLearn
import AppctlTestSupport
import Foundation
import Testing

// `appctl policy merge`: learn fragments and event logs from many hosts into one candidate inventory. The grouping
// runs on real files through FleetMerge; the last suite runs the built binary.

private let fixedTime = Timestamp(secondsSinceEpoch: 1_790_000_000)

private func digest(_ seed: String) -> SHA256Digest { SHA256Digest.of(Array(seed.utf8)) }

private func allow(_ seed: String, size: UInt64, kind: FileKind = .elfExec, origin: Origin = .local, path: String,
                   verity: SHA256Digest? = nil) -> AllowEntry {
    AllowEntry(digest: digest(seed), size: size, kind: kind, origin: origin, path: Array(path.utf8), verity: verity)
}

/// An unsigned inventory as `appctl learn` writes it.
@discardableResult
private func inventory(_ dir: TemporaryDirectory, _ name: String, _ allows: [AllowEntry], denies: [DenyEntry] = []) throws -> String {
    try PolicyWriter.write(path: dir.file(name), header: PolicyHeader(issued: fixedTime), allows: allows, denies: denies, signingKey: nil)
    return dir.file(name)
}

/// One event line in the daemon's form (`EventRecord.jsonLine`), with an optional shipper's `host` key.
private func event(_ decision: String, _ seed: String?, size: Int64, path: String, host: String? = nil) -> String {
    "{\"time\":\"2026-12-01T10:00:00Z\",\"decision\":\"\(decision)\",\"reason\":\"unknown\",\"path\":\"\(path)\","
        + "\"sha256\":\(seed.map { "\"\(digest($0).hex)\"" } ?? "null"),\"size\":\(size),\"dev\":2049,\"ino\":12,\"pid\":4242,\"tid\":4242,"
        + "\"ppid\":1,\"uid\":0,\"exe\":\"/usr/bin/bash\",\"comm\":\"bash\",\"policy_serial\":7,\"mode\":\"monitor\""
        + (host.map { ",\"host\":\"\($0)\"" } ?? "") + "}\n"
}

/// Three hosts: web-01 and web-02 sent inventories, db-01 its event log.
private struct Fleet {
    let dir = TemporaryDirectory("appctl-merge")

    init() throws {
        try inventory(dir, "web-01.txt", [
            allow("nginx", size: 1_200_000, path: "/usr/sbin/nginx"),
            allow("deploy", size: 900, kind: .script, origin: .manual, path: "/srv/deploy.sh"),
            allow("libz", size: 120_000, kind: .elfLib, origin: .dpkg(package: "zlib1g"), path: "/usr/lib/libz.so.1"),
        ])
        try inventory(dir, "web-02.txt", [
            allow("nginx", size: 1_200_000, path: "/usr/local/sbin/nginx"),
            allow("libz", size: 120_000, kind: .elfLib, origin: .dpkg(package: "zlib1g"), path: "/usr/lib/libz.so.1"),
        ])
        try dir.write("db-01.jsonl",
                      event("would-deny", "nginx", size: 1_200_000, path: "/usr/sbin/nginx")
                      + event("would-deny", "nginx", size: 1_200_000, path: "/usr/sbin/nginx")     // the same exec again: still one host
                      + event("deny", "backup", size: 4096, path: "/opt/backup/run")
                      + event("allow", "libc", size: 2_000_000, path: "/usr/lib/libc.so.6")   // allowed already: not a candidate
                      + event("deny", nil, size: -1, path: "/home/x/unreadable")                 // no digest: nothing to allow
                      + "\n")                                                                    // a trailing blank line
    }

    func merge(_ decisions: Set<String> = FleetMerge.defaultDecisions) throws -> FleetMerge {
        var merge = FleetMerge(decisions: decisions)
        for name in ["web-01.txt", "web-02.txt", "db-01.jsonl"] {
            let input = FleetMerge.parseInput(dir.file(name))
            try merge.add(path: input.path, host: input.host)
        }
        return merge
    }
}

private func entry(_ result: MergeResult, _ seed: String) -> MergeResult.Entry? {
    result.kept.first { $0.allow.digest == digest(seed) }
}

@Suite struct PolicyMergeTests {
    @Test func twoInventoriesAndAnEventLogFromThreeHosts() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        let merge = try fleet.merge()
        #expect(merge.hostCount == 3)
        #expect(merge.inventories == 2 && merge.eventLogs == 1 && merge.inventoryEntries == 5)
        #expect(merge.eventLines == 5 && merge.eventsTaken == 3 && merge.eventsWithoutDigest == 1)
        let result = merge.result()
        #expect(result.kept.map(\.hosts) == [3, 2, 1, 1])
        let nginx = try #require(entry(result, "nginx"))
        #expect(nginx.exampleHosts == ["db-01", "web-01", "web-02"])
        // Seen at /usr/sbin/nginx on two hosts, /usr/local/sbin/nginx on one; the inventory's kind beats the event's.
        #expect(nginx.allow.escapedPath == "/usr/sbin/nginx" && nginx.allow.kind == .elfExec && nginx.allow.size == 1_200_000)
        let libz = try #require(entry(result, "libz"))
        #expect(libz.hosts == 2 && libz.allow.origin == .dpkg(package: "zlib1g") && libz.allow.kind == .elfLib)
        // Only in an event: kind and origin unknown, so other-exec and local; the raw path is escaped.
        let backup = try #require(entry(result, "backup"))
        #expect(backup.hosts == 1 && backup.allow.kind == .otherExec && backup.allow.origin == .local && backup.exampleHosts == ["db-01"])
        #expect(entry(result, "libc") == nil, "allow events are not taken by default")
        let report = result.report.split(separator: "\n")
        #expect(report.first == "# hosts sha256 size kind path example-hosts")
        #expect(report[1] == "3\t\(digest("nginx"))\t1200000\telf-exec\t/usr/sbin/nginx\tdb-01,web-01,web-02")
        // --decisions allow takes the allow events too.
        #expect(entry(try fleet.merge(["allow"]).result(), "libc")?.hosts == 1)
    }

    @Test func theOutputReadsBackAsAnInventory() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        try fleet.dir.write("odd.jsonl", event("deny", "odd", size: 7, path: "/tmp/a b\\n%\\u0001é"))
        var merge = try fleet.merge()
        try merge.add(path: fleet.dir.file("odd.jsonl"), host: "odd-host")
        let result = merge.result()
        let out = fleet.dir.file("merged.txt")
        try PolicyWriter.write(path: out, header: PolicyHeader(issued: fixedTime, description: "merged"), allows: result.allows, denies: [],
                               signingKey: nil)
        var read: [AllowEntry] = []
        let back = try PolicyReader(path: out).read(onAllow: { read.append($0.entry()) })
        #expect(back.signature == nil && back.header.denyCount == 0)
        #expect(Set(read) == Set(result.allows))
        let odd = try #require(read.first { $0.digest == digest("odd") })
        #expect(PathEscaping.unescape(odd.escapedPath.utf8, token: true) == Array("/tmp/a b\n%\u{1}é".utf8))
    }

    @Test func minHostsKeepsOnlyWhatEnoughHostsHad() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        let merge = try fleet.merge()
        let two = merge.result(minHosts: 2)
        #expect(Set(two.kept.map(\.allow.digest)) == [digest("nginx"), digest("libz")])
        #expect(two.belowMinimum == 2)
        #expect(merge.result(minHosts: 3).kept.map(\.allow.digest) == [digest("nginx")])
        #expect(merge.result(minHosts: 4).kept.isEmpty)
    }

    @Test func baseAllowsAreLeftOutAndBaseDeniesReported() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        let basePath = try inventory(fleet.dir, "base.txt", [allow("libz", size: 120_000, kind: .elfLib, path: "/usr/lib/libz.so.1")],
                                     denies: [DenyEntry(digest: digest("backup"), note: "ransomware, SEC-41")])
        let base = try MergeBase.read(path: basePath)
        let result = try fleet.merge().result(base: base)
        #expect(Set(result.kept.map(\.allow.digest)) == [digest("nginx"), digest("deploy")])
        #expect(result.alreadyAllowed == 1)
        #expect(result.blocklisted.map(\.digest) == [digest("backup")])
        #expect(result.report.contains("# blocklisted in base: \(digest("backup"))\t1 host\t/opt/backup/run\tdb-01\tnote: ransomware, SEC-41\n"))
        // A blocklisted digest stays out and reported whatever --min-hosts says.
        #expect(try fleet.merge().result(base: base, minHosts: 3).blocklisted.count == 1)
    }

    @Test func keptDigestsSharingAPathGetTheirDigestAppended() throws {
        let dir = TemporaryDirectory("appctl-merge"); defer { dir.remove() }
        // Three versions of /opt/app/run: v2 on two hosts keeps the path.
        try inventory(dir, "a.txt", [allow("v1", size: 10, path: "/opt/app/run")])
        try inventory(dir, "b.txt", [allow("v2", size: 20, path: "/opt/app/run")])
        try inventory(dir, "c.txt", [allow("v2", size: 20, path: "/opt/app/run")])
        try dir.write("d.jsonl", event("deny", "v3", size: 30, path: "/opt/app/run"))
        var merge = FleetMerge()
        for name in ["a.txt", "b.txt", "c.txt", "d.jsonl"] { try merge.add(path: dir.file(name), host: name) }
        let result = merge.result()
        #expect(entry(result, "v2")?.allow.escapedPath == "/opt/app/run")
        #expect(entry(result, "v1")?.allow.escapedPath == "/opt/app/run#" + digest("v1").hex.prefix(12))
        #expect(entry(result, "v3")?.allow.escapedPath == "/opt/app/run#" + digest("v3").hex.prefix(12))
        // The format refuses one path twice: the result must write and read back.
        try PolicyWriter.write(path: dir.file("out.txt"), header: PolicyHeader(issued: fixedTime), allows: result.allows, denies: [], signingKey: nil)
        #expect(try PolicyReader(path: dir.file("out.txt")).read().header.allowCount == 3)
    }

    @Test func aDigestWithTwoSizesIsAConflictAndLeftOut() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        // evil-07 claims nginx's digest with another size (and ships a log line naming its host).
        try fleet.dir.write("shipper.jsonl", event("deny", "nginx", size: 666, path: "/usr/sbin/nginx", host: "evil-07"))
        var merge = try fleet.merge()
        try merge.add(path: fleet.dir.file("shipper.jsonl"), host: "shipper")
        #expect(merge.hostCount == 4, "the shipper's file names its host on every line: 'shipper' is no host")
        let result = merge.result()
        #expect(entry(result, "nginx") == nil)
        #expect(result.conflicts.map(\.digest) == [digest("nginx")])
        #expect(result.report.contains("# conflict: \(digest("nginx"))\tsizes differ: 1200000 on 3 hosts (db-01,web-01,web-02); 666 on 1 host (evil-07)\n"))
        #expect(entry(result, "libz") != nil, "the other digests are kept")
    }

    /// An fs-verity digest lets hosts allow a file without reading it: one host's word must not ride on a digest
    /// many hosts have without the reviewer seeing it, and hosts that disagree get none.
    @Test func fsVerityDigestsAreNeverChosenByVote() throws {
        let dir = TemporaryDirectory("appctl-merge"); defer { dir.remove() }
        try inventory(dir, "a.txt", [allow("tool", size: 5, path: "/opt/tool", verity: digest("verity-a")),
                                     allow("lib", size: 6, path: "/opt/lib", verity: digest("verity-x"))])
        try inventory(dir, "b.txt", [allow("tool", size: 5, path: "/opt/tool", verity: digest("verity-b")),
                                     allow("lib", size: 6, path: "/opt/lib")])
        try dir.write("c.jsonl", event("deny", "gone", size: -1, path: "/opt/gone"))
        var merge = FleetMerge()
        for name in ["a.txt", "b.txt", "c.jsonl"] { try merge.add(path: dir.file(name), host: name) }
        let result = merge.result()
        #expect(entry(result, "tool")?.allow.verity == nil)
        #expect(entry(result, "lib")?.allow.verity == nil, "one host's verity digest does not ride on a file two hosts have")
        #expect(result.report.contains("# note: \(digest("tool"))\tfs-verity dropped: inventories disagree"))
        #expect(result.report.contains("# note: \(digest("lib"))\tfs-verity \(digest("verity-x")) dropped: vouched for by only 1 of 2 hosts (a.txt); hosts will hash the file\n"))
        #expect(entry(result, "gone") == nil && result.withoutSize.map(\.digest) == [digest("gone")])
    }

    @Test func aMalformedJSONLineStopsTheMergeWithItsLineNumber() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        try fleet.dir.write("bad.jsonl", event("deny", "x", size: 1, path: "/x") + "\n" + "{\"decision\":\"deny\", oops}\n")
        var merge = FleetMerge()
        let error = try #require(throws: MergeError.self) { try merge.add(path: fleet.dir.file("bad.jsonl"), host: "bad") }
        #expect(error.line == 3 && error.file == fleet.dir.file("bad.jsonl"))
        #expect(error.description.hasPrefix("\(fleet.dir.file("bad.jsonl")):3: not valid JSON"), "\(error)")
        // Valid JSON with a sha256 that is not one, and a log cut mid-line, are refused too.
        try fleet.dir.write("digest.jsonl", "{\"decision\":\"deny\",\"sha256\":\"abc\",\"size\":1}\n")
        #expect(throws: MergeError.self) { try merge.add(path: fleet.dir.file("digest.jsonl"), host: "h") }
        try fleet.dir.write("cut.jsonl", event("deny", "x", size: 1, path: "/x") + "{\"decision\":\"de")
        let cut = try #require(throws: MergeError.self) { try merge.add(path: fleet.dir.file("cut.jsonl"), host: "h") }
        #expect(cut.line == 2)
    }

    @Test func aMalformedInventoryNamesItsLine() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        var text = String(decoding: try fleet.dir.read("web-01.txt"), as: UTF8.self)
        text = text.replacingOccurrences(of: "/srv/deploy.sh", with: "/srv/deploy sh")
        try fleet.dir.write("broken.txt", text)
        var merge = FleetMerge()
        let error = try #require(throws: MergeError.self) { try merge.add(path: fleet.dir.file("broken.txt"), host: "broken") }
        #expect(error.line == 5, "\(error)")
    }

    /// A shipper's log from many hosts: each host counts once however often it ran the program, past the point where
    /// a digest's host set turns from a list into a bitmap.
    @Test func manyHostsInOneShippedLogAreCountedOnceEach() throws {
        let dir = TemporaryDirectory("appctl-merge"); defer { dir.remove() }
        var log = ""
        for round in 0..<3 {
            for h in (0..<200).reversed() {
                log += event("would-deny", "common", size: 99, path: "/usr/bin/common", host: "h-" + String(1000 + h).dropFirst())
                if h % 2 == 0 && round == 0 { log += event("deny", "half", size: 5, path: "/usr/bin/half", host: "h-" + String(1000 + h).dropFirst()) }
            }
        }
        try dir.write("fleet.jsonl", log)
        var merge = FleetMerge()
        try merge.add(path: dir.file("fleet.jsonl"), host: "fleet")
        #expect(merge.hostCount == 200 && merge.eventsTaken == 700)
        let result = merge.result(minHosts: 150)
        #expect(result.kept.count == 1 && result.belowMinimum == 1)
        let common = try #require(entry(result, "common"))
        #expect(common.hosts == 200 && common.exampleHosts == ["h-000", "h-001", "h-002", "h-003", "h-004"])
        #expect(entry(merge.result(), "half")?.hosts == 100)
    }

    @Test func inputsNameTheirHosts() {
        #expect(FleetMerge.parseInput("logs/web-01.jsonl") == (host: "web-01", path: "logs/web-01.jsonl"))
        #expect(FleetMerge.parseInput("db-01=/var/tmp/events.jsonl.1") == (host: "db-01", path: "/var/tmp/events.jsonl.1"))
        #expect(FleetMerge.parseInput("./a=b.jsonl") == (host: "a=b", path: "./a=b.jsonl"))
        #expect(FleetMerge.parseInput("web-01.example.com.txt").host == "web-01.example.com")
        #expect(FleetMerge.defaultHost(forPath: "/x/.hidden") == ".hidden")
    }
}

@Suite struct PolicyMergeCommandLineTests {
    @Test func mergeWritesAnInventoryAndAReportAndRefusesBadInput() throws {
        let fleet = try Fleet(); defer { fleet.dir.remove() }
        let out = fleet.dir.file("candidate.txt"), report = fleet.dir.file("review.tsv")
        let r = try appctl("policy", "merge", "--out", out, "--report", report, "--min-hosts", "2",
                           fleet.dir.file("web-01.txt"), fleet.dir.file("web-02.txt"), "db-01=" + fleet.dir.file("db-01.jsonl"))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("from 3 hosts") && r.stdout.contains("2 digests") && r.stdout.contains("2 on fewer hosts"), "\(r.stdout)")
        let show = try appctl("policy", "show", out)
        #expect(show.status == 0 && show.stdout.contains("signed:      no"), "\(show.stdout)")
        #expect(show.stdout.contains("merged from 3 hosts (3 inputs)"), "\(show.stdout)")
        let table = String(decoding: try fleet.dir.read("review.tsv"), as: UTF8.self).split(separator: "\n")
        #expect(table.count == 3 && table[1].hasPrefix("3\t\(digest("nginx"))\t"), "\(table)")

        try fleet.dir.write("bad.jsonl", "{\"decision\":\"deny\"\n")
        let bad = try appctl("policy", "merge", "--out", fleet.dir.file("none.txt"), fleet.dir.file("web-01.txt"), fleet.dir.file("bad.jsonl"))
        #expect(bad.status == 1)
        #expect(bad.stderr == "appctl: \(fleet.dir.file("bad.jsonl")):1: not valid JSON: {\"decision\":\"deny\"\n", "\(bad.stderr)")
        #expect((try? linkStatus(fleet.dir.file("none.txt"))) == nil, "nothing is written on bad input")
        #expect(try appctl("policy", "merge", "--out", out, "--min-hosts", "0", fleet.dir.file("web-01.txt")).status == 2)
        #expect(try appctl("policy", "merge", "--help").stdout.contains("PATH#<first 12 hex digits"))
    }
}
