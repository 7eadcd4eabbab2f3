import AppctlCore
import AppctlFleet
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 12: fleet distribution. A real `appctl daemon` enforces on the test's own tmpfs from a policy directory that
/// `appctl sync` fills from a bundle, served by a real HTTP server on 127.0.0.1 (Python's http.server) or read from a
/// directory. Every refusal is checked against the daemon: the layers in force stay, and it keeps enforcing them.
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: fanotify and mounts"))
struct FleetSyncTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    /// First sync, a poll that finds nothing new, an update, and then every way a channel can go wrong, each refused
    /// with its reason while the daemon keeps enforcing the set it has.
    @Test func aHostSyncsOverHTTPAndRefusesEveryBadBundle() throws {
        let fleet = try Fleet(); defer { fleet.stop() }
        let h = fleet.h
        let known = h.mount + "/known", webApp = try h.makeUnknown("web-app"), unknown = try h.makeUnknown("unknown")
        let later = try h.makeUnknown("later")
        for path in [later, unknown] { _ = try h.digest(path) }   // taken now: once enforced, an unknown program cannot even be read
        let base1 = try fleet.layer("base", serial: 1, allow: [known], delegations: [fleet.webDelegation()])
        let web1 = try fleet.layer("web", serial: 1, allow: [webApp], supplementOf: "base", key: fleet.supplementKeys)
        try fleet.publish([base1, web1]).expectSuccess()
        try fleet.startServer()

        // First sync, before the daemon runs: it enforces the set when it starts.
        let first = try fleet.sync()
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("installed: base 1, web 1"), "\(first.stdout)")
        try h.start(mode: "enforce", extra: ["--policy-dir", fleet.policyDir])
        #expect(try fleet.layersInForce() == ["base 1 (base)", "web 1 (supplement, 1 allow)"])
        try fleet.expectEnforcing(allowed: [known, webApp], denied: [unknown, later])

        // A poll that finds nothing new costs a 304 and no policy bytes, every time (a 304 must not lose the validators).
        let requestsBefore = fleet.serverLog().count
        for _ in 0..<3 {
            let poll = try fleet.sync()
            #expect(poll.status == 0 && poll.stdout.hasPrefix("nothing new"), "\(poll.stdout) \(poll.stderr)")
            #expect(poll.stdout.contains("0 bytes fetched (not modified)"), "\(poll.stdout)")
        }
        #expect(fleet.serverLog().dropFirst(requestsBefore).map { $0.split(separator: " ")[1] } == ["304", "304", "304"], "\(fleet.serverLog())")

        // An update of the base reaches the daemon.
        let base2 = try fleet.layer("base", serial: 2, allow: [known, later], delegations: [fleet.webDelegation()])
        try fleet.publish([base2, web1]).expectSuccess()
        let update = try fleet.sync()
        #expect(update.status == 0 && update.stdout.contains("installed: base 2, web 1") && update.stdout.contains("the daemon enforces it"), "\(update.stdout) \(update.stderr)")
        try fleet.expectEnforcing(allowed: [known, webApp, later], denied: [unknown])
        let good = try fleet.layersInForce()
        #expect(good == ["base 2 (base)", "web 1 (supplement, 1 allow)"])
        let captured = h.dir.file("captured-bundle")   // what an attacker who saw release 2 could replay later
        _ = try run("/bin/cp", ["-a", fleet.bundle, captured])

        /// Each refusal: exit 1, the reason on stderr, the same layers in force, the same decisions.
        func expectRefused(_ what: String, _ reason: String, from: String? = nil, extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws {
            let result = try fleet.sync(from: from, extra: extra)
            #expect(result.status == 1, "\(what): exit \(result.status): \(result.stdout)", sourceLocation: sourceLocation)
            #expect(result.stderr.contains(reason), "\(what): \(result.stderr)", sourceLocation: sourceLocation)
            #expect(result.stderr.split(separator: "\n").count == 1, "\(what): one line: \(result.stderr)", sourceLocation: sourceLocation)
            #expect(try fleet.layersInForce() == good, "\(what): the layers in force changed", sourceLocation: sourceLocation)
            #expect((try h.status()["sync_last_result"] as? String) == "refused", sourceLocation: sourceLocation)
            try fleet.expectEnforcing(allowed: [known, webApp, later], denied: [unknown], sourceLocation: sourceLocation)
        }

        // A tampered policy file (one byte changed on the server).
        let base3 = try fleet.layer("base", serial: 3, allow: [known, later], delegations: [fleet.webDelegation()])
        try fleet.publish([base3, web1]).expectSuccess()
        let base3Served = fleet.bundle + "/files/" + (try sha256sum(base3)) + ".policy"
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: base3Served)))
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: base3Served))
        try expectRefused("tampered file", "not what the timestamp lists (tampered")

        // Files of two releases mixed: the new timestamp, but the old release's base served under the new name.
        _ = try run("/bin/cp", [base2, base3Served])
        try expectRefused("mixed releases", "the timestamp lists")

        // A replayed older serial with a fresh timestamp (the publisher, or whoever holds its timestamp key).
        try fleet.publish([base1, web1]).expectSuccess()
        try expectRefused("replayed serial", "serial 1 is lower than 2, the last applied on this host (rollback refused)")

        // The captured bundle of release 2 replayed: its timestamp is older than the one this host has seen.
        try expectRefused("replayed bundle", "older than version", from: captured)

        // A timestamp past its validity (signed correctly, newest version, but expired: a frozen channel).
        let past = Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch - 7200)
        try fleet.publish([base2, web1]).expectSuccess()
        try fleet.resignTimestamp { $0.issued = Timestamp(secondsSinceEpoch: past.secondsSinceEpoch - 3600); $0.expires = past }
        try expectRefused("expired timestamp", "the channel is frozen")

        // Truncated, oversized and stalled responses from the server.
        try fleet.publish([base3Clean(fleet, known: known, later: later), web1]).expectSuccess()
        try fleet.misbehave("truncate")
        try expectRefused("truncated response", fleet.policyFetchFailure)
        try fleet.misbehave("oversize")
        try expectRefused("oversized response", "larger than the")
        try fleet.misbehave("stall")
        let stalledAt = monotonicSeconds()
        try expectRefused("stalled transfer", "too slow", extra: ["--stall-timeout", "2s"])
        #expect(monotonicSeconds() - stalledAt < 30, "a stalled server is given up on after the stall timeout")
        try fleet.misbehave("")

        // A supplement signed by a key the base does not delegate to, and one that tries to add a deny.
        let stranger = try TestKeys(in: h.dir, name: "stranger")
        let web2 = try fleet.layer("web", serial: 2, allow: [webApp], supplementOf: "base", key: stranger)
        try fleet.publish([base2, web2]).expectSuccess()
        try expectRefused("undelegated key", "delegates 'web' to key \(fleet.supplementKeys.publicKey.keyID)")
        let web3 = try fleet.layer("web", serial: 3, allow: [webApp], deny: [known], supplementOf: "base", key: fleet.supplementKeys)
        try fleet.publish([base2, web3]).expectSuccess()
        try expectRefused("supplement with a deny", "a supplement may only add allow entries")

        // A timestamp that claims another serial for a file than the file has, and one issued in the future.
        let web4 = try fleet.layer("web", serial: 4, allow: [webApp], supplementOf: "base", key: fleet.supplementKeys)
        try fleet.publish([base2, web4]).expectSuccess()
        try fleet.resignTimestamp { t in t.files = t.files.map { var f = $0; if f.layer == "web" { f.serial = 99 }; return f } }
        try expectRefused("serial the file does not have", "has serial 4, but the timestamp lists serial 99")
        try fleet.publish([base2, web4]).expectSuccess()
        try fleet.resignTimestamp { $0.issued = Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch + 3600) }
        try expectRefused("issued in the future", "in the future of this host's clock")

        // And the channel recovers: a good bundle installs again.
        try fleet.publish([base2, web4]).expectSuccess()
        let recovered = try fleet.sync()
        #expect(recovered.status == 0 && recovered.stdout.contains("installed: base 2, web 4"), "\(recovered.stdout) \(recovered.stderr)")
        #expect(try h.status()["sync_last_result"] as? String == "installed")

        // A set the daemon refuses (here: sync trusts another base key than the daemon) is taken out again.
        let other = try TestKeys(in: h.dir, name: "other-base")
        let foreign = try fleet.layer("base", serial: 9, allow: [known, later, unknown], key: other, file: "foreign-base")
        try fleet.publish([foreign]).expectSuccess()
        let before = try FileManager.default.contentsOfDirectory(atPath: fleet.policyDir).sorted()
        let refusedByDaemon = try fleet.sync(key: other.publicPath)
        #expect(refusedByDaemon.status == 1 && refusedByDaemon.stderr.contains("the daemon refused the new set, the previous one is back in place"),
                "\(refusedByDaemon.stdout) \(refusedByDaemon.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fleet.policyDir).sorted() == before)
        #expect(try fleet.layersInForce() == ["base 2 (base)", "web 4 (supplement, 1 allow)"])
        try fleet.expectEnforcing(allowed: [known, webApp, later], denied: [unknown])
    }

    /// A delegation's limits hold at the exec, not only on paper: a supplement limited to scripts cannot allow an ELF
    /// program by labelling it a script; a supplement for other hosts and one past its expiry allow nothing here.
    @Test func delegationLimitsHoldAtTheExec() throws {
        let fleet = try Fleet(); defer { fleet.stop() }
        let h = fleet.h
        let known = h.mount + "/known", disguised = try h.makeUnknown("disguised"), dbTool = try h.makeUnknown("db-tool")
        let lapsedTool = try h.makeUnknown("lapsed-tool")
        let script = try h.writeScript("deploy.sh", "#!/bin/sh\nexit 0\n")
        for path in [disguised, dbTool, lapsedTool, script] { _ = try h.digest(path) }
        let scripts = Delegation(name: "scripts", publicKey: fleet.supplementKeys.publicKey, kinds: [.script])
        let db = Delegation(name: "db", publicKey: fleet.supplementKeys.publicKey)
        let lapsing = Delegation(name: "lapsing", publicKey: fleet.supplementKeys.publicKey)
        let base = try fleet.layer("base", serial: 1, allow: [known], delegations: [scripts, db, lapsing])
        let scriptLayer = try fleet.layer("scripts", serial: 1, allow: [script, disguised], kind: .script, supplementOf: "base", key: fleet.supplementKeys)
        let dbLayer = try fleet.layer("db", serial: 1, allow: [dbTool], supplementOf: "base", key: fleet.supplementKeys, scope: ["db-*"])
        let lapsingLayer = try fleet.layer("lapsing", serial: 1, allow: [lapsedTool], supplementOf: "base",
                                           expires: Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch + 8), key: fleet.supplementKeys)
        try fleet.publish([base, scriptLayer, dbLayer, lapsingLayer]).expectSuccess()
        let sync = try fleet.sync(from: fleet.bundle)
        #expect(sync.status == 0, "\(sync.stderr)")
        try h.start(mode: "enforce", extra: ["--policy-dir", fleet.policyDir])
        let status = try h.status()
        #expect(status["policy_layers_skipped"] as? [String] == ["db 1 (for hosts db-*)"], "\(status["policy_layers_skipped"] ?? "")")
        try fleet.expectEnforcing(allowed: [known, script, lapsedTool], denied: [disguised, dbTool])
        #expect(try h.waitUntil(10) { h.eventRecords().contains { $0["reason"] as? String == "kind-not-delegated" && $0["path"] as? String == disguised } })
        // Past its expiry the supplement's entries lose their allow within the daemon's minute check.
        #expect(try h.waitUntil(90) { (try h.status()["policy_layers_skipped"] as? [String] ?? []).contains { $0.hasPrefix("lapsing 1 (expired") } })
        try fleet.expectEnforcing(allowed: [known, script], denied: [lapsedTool, disguised, dbTool])
    }

    /// The daemon restarted with every layer present enforces the same decisions; with the base expired it enforces the
    /// last-known-good set. Synced from a directory (a mount, an rsync target).
    @Test func restartsKeepTheLayersAndAnExpiredBaseFallsBackToTheLastKnownGood() throws {
        let fleet = try Fleet(); defer { fleet.stop() }
        let h = fleet.h
        let known = h.mount + "/known", webApp = try h.makeUnknown("web-app"), unknown = try h.makeUnknown("unknown")
        let expiresSoon = Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch + 6)
        let base = try fleet.layer("base", serial: 5, allow: [known], delegations: [fleet.webDelegation()], expires: expiresSoon)
        let web = try fleet.layer("web", serial: 7, allow: [webApp], supplementOf: "base", key: fleet.supplementKeys)
        try fleet.publish([base, web]).expectSuccess()
        let first = try fleet.sync(from: fleet.bundle)
        #expect(first.status == 0, "\(first.stderr)")
        try h.start(mode: "enforce", extra: ["--policy-dir", fleet.policyDir])
        let layers = try fleet.layersInForce()
        #expect(layers == ["base 5 (base)", "web 7 (supplement, 1 allow)"])
        try fleet.expectEnforcing(allowed: [known, webApp], denied: [unknown])
        #expect(h.signalDaemon(SIGTERM) == 0)

        try h.start(mode: "enforce", extra: ["--policy-dir", fleet.policyDir])
        #expect(try fleet.layersInForce() == layers)
        #expect(try h.status()["policy_source"] as? String == "configured")
        try fleet.expectEnforcing(allowed: [known, webApp], denied: [unknown])

        #expect(try h.waitUntil(30) { try h.status()["policy_expired"] as? Bool == true }, "the base expires while in force")
        try fleet.expectEnforcing(allowed: [known, webApp], denied: [unknown])
        #expect(h.signalDaemon(SIGTERM) == 0)
        try h.start(mode: "enforce", extra: ["--policy-dir", fleet.policyDir])
        let status = try h.status()
        #expect(status["policy_source"] as? String == "last-known-good")
        #expect((status["last_policy_error"] as? String ?? "").contains("expired"), "\(status["last_policy_error"] ?? "")")
        #expect(try fleet.layersInForce() == layers)
        try fleet.expectEnforcing(allowed: [known, webApp], denied: [unknown])
    }

    /// Roll-out rings by machine id: a host outside the ring keeps the release and evaluates the next serial as a
    /// candidate (the daemon counts what it would deny); widening the ring brings it the new serial. And the shrink
    /// guard refuses a base that drops most entries unless its signed header says so.
    @Test func ringsShadowEvaluationAndTheShrinkGuard() throws {
        let fleet = try Fleet(); defer { fleet.stop() }
        let h = fleet.h
        let known = h.mount + "/known", retired = try h.makeUnknown("retired"), unknown = try h.makeUnknown("unknown")
        // A machine id outside a 50 % canary ring.
        let outside = (0..<1000).map { "host-\($0)" }.first { rolloutBucket(machineID: $0) >= 5000 }!
        try outside.write(toFile: fleet.machineIDFile, atomically: false, encoding: .utf8)
        let filler = (0..<150).map { i in SHA256Digest.of(Array("filler \(i)".utf8)) }
        let release = try fleet.layer("base", serial: 1, allow: [known, retired], extraDigests: filler)
        let next = try fleet.layer("base", serial: 2, allow: [known], extraDigests: filler)
        try fleet.publish([release, next], rings: ["canary=50"]).expectSuccess()
        let first = try fleet.sync(from: fleet.bundle)
        #expect(first.status == 0 && first.stdout.contains("installed: base 1; candidates base 2; ring rest"), "\(first.stdout) \(first.stderr)")
        try h.start(mode: "enforce", extra: ["--policy-dir", fleet.policyDir])
        var status = try h.status()
        #expect(status["candidate_layers"] as? [String] == ["base 2"], "\(status["candidate_error"] ?? "")")
        #expect(try h.exec(retired) == 0, "the release allows it")
        #expect(try h.waitUntil(10) { try h.status()["candidate_would_deny_programs"] as? Int == 1 })
        #expect(try h.exec(known) == 0)
        status = try h.status()
        #expect(status["candidate_would_deny_programs"] as? Int == 1, "only the retired program")
        #expect((status["candidate_would_deny"] as? Int ?? 0) >= 1)
        #expect(try h.waitUntil(10) { h.eventRecords().contains { $0["decision"] as? String == "candidate-would-deny" && ($0["path"] as? String) == retired } })

        // The publisher widens the ring: this host now gets serial 2, and enforces it.
        try fleet.publish([release, next], rings: ["canary=100"]).expectSuccess()
        let widened = try fleet.sync(from: fleet.bundle)
        #expect(widened.status == 0 && widened.stdout.contains("installed: base 2; ring canary"), "\(widened.stdout) \(widened.stderr)")
        #expect(try h.exec(retired) == 126)
        #expect(try h.status()["candidate_layers"] as? [String] == [])

        // The shrink guard: 151 entries to 1 is refused unless the signer says so.
        let emptied = try fleet.layer("base", serial: 3, allow: [known])
        try fleet.publish([emptied]).expectSuccess()
        let refused = try fleet.sync(from: fleet.bundle)
        #expect(refused.status == 1 && refused.stderr.contains("shrink guard"), "\(refused.stderr)")
        #expect(try fleet.layersInForce() == ["base 2 (base)"])
        let meant = try fleet.layer("base", serial: 4, allow: [known], shrink: true)
        try fleet.publish([meant]).expectSuccess()
        let accepted = try fleet.sync(from: fleet.bundle)
        #expect(accepted.status == 0, "\(accepted.stderr)")
        #expect(try fleet.layersInForce() == ["base 4 (base)"])
        try fleet.expectEnforcing(allowed: [known], denied: [unknown, retired])
    }
}

/// A third base release with the same content as the second but a new serial (the one the bad-channel cases fetch).
private func base3Clean(_ fleet: Fleet, known: String, later: String) throws -> String {
    try fleet.layer("base", serial: 3, allow: [known, later], delegations: [fleet.webDelegation()], file: "base-3-clean")
}

/// One host of a fleet: the harness's daemon and tmpfs, a supplement key and a timestamp key, a bundle directory, a
/// policy directory, a machine id, and (when started) an HTTP server serving the bundle.
final class Fleet: @unchecked Sendable {
    let h: DaemonHarness
    let supplementKeys: TestKeys
    let timestampKeys: TestKeys
    var policyDir: String { h.dir.file("policy.d") }
    var bundle: String { h.dir.file("bundle") }
    var machineIDFile: String { h.dir.file("machine-id") }
    var serverLogPath: String { h.dir.file("server.log") }
    private var server: Process?
    private var port = 0

    init() throws {
        h = try DaemonHarness()
        supplementKeys = try TestKeys(in: h.dir, name: "web-team")
        timestampKeys = try TestKeys(in: h.dir, name: "timestamp")
        try "test-host-machine-id\n".write(toFile: machineIDFile, atomically: false, encoding: .utf8)
    }

    func webDelegation() -> Delegation {
        Delegation(name: "web", publicKey: supplementKeys.publicKey, maximumEntries: 100, kinds: [.elfExec], maximumValiditySeconds: nil)
    }

    /// Signs a layer allowing (and denying) these files by content; `extraDigests` adds entries for content that is
    /// nowhere (to give a layer size).
    @discardableResult
    func layer(_ name: String, serial: UInt64, allow: [String], kind: FileKind = .elfExec, deny: [String] = [], supplementOf: String? = nil,
               delegations: [Delegation] = [], expires: Timestamp? = nil, key: TestKeys? = nil, shrink: Bool = false, scope: [String] = [],
               extraDigests: [SHA256Digest] = [], file: String? = nil) throws -> String {
        let signer = key ?? h.keys
        var entries = try allow.map { p in
            AllowEntry(digest: try h.digest(p), size: UInt64(try linkStatus(p).st_size), kind: kind, origin: .manual, path: Array(p.utf8))
        }
        entries += extraDigests.enumerated().map { AllowEntry(digest: $1, size: 1000 + UInt64($0), kind: .elfExec, origin: .manual, path: Array("/opt/filler/\($0)".utf8)) }
        var header = PolicyHeader(serial: serial, issued: .now, expires: expires, keyID: signer.publicKey.keyID, scope: scope)
        header.name = name
        header.supplementOf = supplementOf
        header.delegations = delegations
        header.shrinkPermitted = shrink
        let path = h.dir.file("\(file ?? "\(name)-\(serial)").signed")
        try PolicyWriter.write(path: path, header: header, allows: entries, denies: try deny.map { DenyEntry(digest: try h.digest($0), note: "test") },
                               signingKey: signer.privateKey)
        return path
    }

    func publish(_ policies: [String], rings: [String] = [], validFor: String = "1h") throws -> ProcessResult {
        try run(appctlBinary, ["bundle", "publish", "--timestamp-key", timestampKeys.privatePath, "--valid-for", validFor, "--out", bundle]
                + rings.flatMap { ["--ring", $0] } + policies)
    }

    /// Rewrites the bundle's timestamp with changes, signed with the timestamp key (what a holder of that key could do).
    func resignTimestamp(_ change: (inout BundleTimestamp) -> Void) throws {
        let path = bundle + "/" + BundleTimestamp.fileName
        var timestamp = try BundleTimestamp.verified(Array(try Data(contentsOf: URL(fileURLWithPath: path))), key: timestampKeys.publicKey, source: path)
        change(&timestamp)
        let bytes = try timestamp.signed(with: timestampKeys.privateKey)
        let previous = try linkStatus(path).st_mtim.tv_sec
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        // Later than the copy it replaces, as `bundle publish` does: the server's If-Modified-Since has one-second
        // resolution, and an mtime that did not move would be answered 304.
        let later = max(previous + 1, time(nil))
        var times = [timespec(tv_sec: later, tv_nsec: 0), timespec(tv_sec: later, tv_nsec: 0)]
        utimensat(AT_FDCWD, path, &times, 0)
    }

    func sync(from: String? = nil, key: String? = nil, extra: [String] = []) throws -> ProcessResult {
        try run(appctlBinary, ["sync", "--once", "--from", from ?? "http://127.0.0.1:\(port)", "--key", key ?? h.keys.publicPath,
                               "--timestamp-key", timestampKeys.publicPath, "--policy-dir", policyDir, "--state-dir", h.stateDir,
                               "--socket", h.socket, "--machine-id-file", machineIDFile, "--report", h.dir.file("host-report.jsonl"),
                               "--config", "/dev/null"] + extra)
    }

    /// The message a cut-off policy transfer gets: libcurl's own ("transfer closed with … bytes remaining"), or the
    /// size check behind it.
    let policyFetchFailure = "transfer closed with"

    func startServer() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/bundle-server.py").path
        process.arguments = [fixture, bundle, serverLogPath]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        server = process
        // The server prints its port once it listens: an acknowledged state, not a sleep.
        var line = Data()
        while !line.contains(0x0a) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { throw HarnessError("the bundle server exited before it listened") }
            line += chunk
        }
        port = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(port > 0)
    }

    func misbehave(_ mode: String) throws {
        if mode.isEmpty { unlink(bundle + "/.misbehave") } else { try mode.write(toFile: bundle + "/.misbehave", atomically: true, encoding: .utf8) }
    }

    func serverLog() -> [String] {
        ((try? String(contentsOfFile: serverLogPath, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    func layersInForce() throws -> [String] { try h.status()["policy_layers"] as? [String] ?? [] }

    func expectEnforcing(allowed: [String], denied: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        for path in allowed { #expect(try h.exec(path) == 0, "\(path) must run", sourceLocation: sourceLocation) }
        for path in denied { #expect(try h.exec(path) == 126, "\(path) must be denied", sourceLocation: sourceLocation) }
    }

    func stop() {
        if let server, server.isRunning {
            kill(server.processIdentifier, SIGKILL)   // by the PID this test started
            server.waitUntilExit()
        }
        h.stop()
    }
}

extension ProcessResult {
    func expectSuccess(sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(status == 0, "\(stdout) \(stderr)", sourceLocation: sourceLocation)
        if status != 0 { throw HarnessError("command failed: \(stderr)") }
    }
}
