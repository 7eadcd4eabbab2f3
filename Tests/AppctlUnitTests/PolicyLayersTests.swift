import AppctlCore
import AppctlFleet
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// Issue 12 without root: format version 5's layer lines, the rules a layer set must keep, the per-layer records,
/// and the bundle timestamp.
@Suite struct PolicyLayersTests {
    let dir = TemporaryDirectory("appctl-layers")
    let baseKeys: TestKeys
    let webKeys: TestKeys

    init() throws {
        baseKeys = try TestKeys(in: dir, name: "base")
        webKeys = try TestKeys(in: dir, name: "web")
    }

    func digest(_ text: String) -> SHA256Digest { SHA256Digest.of(Array(text.utf8)) }

    /// Writes `<file>` into `directory` (created), a layer with allow entries for `allow` (texts standing for contents).
    @discardableResult
    func layer(_ name: String, serial: UInt64 = 1, allow: [String], kind: FileKind = .elfExec, deny: [String] = [], supplementOf: String? = nil,
               delegations: [Delegation] = [], expires: Timestamp? = nil, issued: Timestamp = .now, key: TestKeys? = nil, shrink: Bool = false,
               directory: String = "set", file: String? = nil) throws -> String {
        let signer = key ?? baseKeys
        var header = PolicyHeader(serial: serial, issued: issued, expires: expires, keyID: signer.publicKey.keyID)
        header.name = name
        header.supplementOf = supplementOf
        header.delegations = delegations
        header.shrinkPermitted = shrink
        try FileManager.default.createDirectory(atPath: dir.file(directory), withIntermediateDirectories: true)
        let path = dir.file(directory + "/" + (file ?? name + PolicyLayers.enforcedSuffix))
        try PolicyWriter.write(path: path, header: header,
                               allows: allow.map { AllowEntry(digest: digest($0), size: 10, kind: kind, origin: .manual, path: Array("/opt/\($0)".utf8)) },
                               denies: deny.map { DenyEntry(digest: digest($0), note: nil) }, signingKey: signer.privateKey)
        return path
    }

    func web(maximumEntries: Int? = nil, kinds: [FileKind] = [], maximumValidity: UInt64? = nil) -> Delegation {
        Delegation(name: "web", publicKey: webKeys.publicKey, maximumEntries: maximumEntries, kinds: kinds, maximumValiditySeconds: maximumValidity)
    }

    func compose(_ directory: String = "set") throws(PolicyError) -> LoadedPolicy {
        try PolicyLayers.load(directory: dir.file(directory), key: baseKeys.publicKey)
    }

    @Test func versionFiveRoundTripsAndHasOneSpelling() throws {
        let path = try layer("base", allow: ["a"], delegations: [web(maximumEntries: 5, kinds: [.script, .elfExec], maximumValidity: 86_400)], shrink: true)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasPrefix("appctl-policy 5\n"))
        #expect(text.contains("\nname base\n"))
        #expect(text.contains("\ndelegate name=web,key=\(Hex.encode(webKeys.publicKey.raw)),max-entries=5,kinds=elf-exec:script,max-valid=86400s\n"))
        #expect(text.contains("\nshrink permitted\nallow-count 1\n"))
        let header = try PolicyLayers.readHeader(path: path, shown: path)
        #expect(header.name == "base" && header.shrinkPermitted && header.delegations == [web(maximumEntries: 5, kinds: [.elfExec, .script], maximumValidity: 86_400)])

        // Other spellings of the same lines are refused by the reader.
        func refused(_ edit: (String) -> String, _ why: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            try dir.write("edited", edit(text))
            #expect(throws: PolicyError.self, "\(why)", sourceLocation: sourceLocation) { try PolicyReader(path: dir.file("edited")).read() }
        }
        try refused({ $0.replacingOccurrences(of: "appctl-policy 5", with: "appctl-policy 4") }, "layer lines need version 5")
        try refused({ $0.replacingOccurrences(of: "max-valid=86400s", with: "max-valid=1d") }, "durations in seconds")
        try refused({ $0.replacingOccurrences(of: "kinds=elf-exec:script", with: "kinds=script:elf-exec") }, "kinds sorted")
        try refused({ $0.replacingOccurrences(of: "shrink permitted", with: "shrink yes") }, "only 'permitted'")
        try refused({ $0.replacingOccurrences(of: "name base\n", with: "name Base\n") }, "lowercase names")
        try refused({ $0.replacingOccurrences(of: "name base\n", with: "") .replacingOccurrences(of: "delegate", with: "x-delegate") }, "unknown field")
        // A version-5 file without any layer line is refused (write it as a lower version).
        var plain = PolicyHeader(serial: 1, issued: .now, keyID: baseKeys.publicKey.keyID)
        plain.version = 5
        let writer = PolicyWriter(output: try FileDescriptor.open(dir.file("plain"), [.writeOnly, .create, .truncate]), name: "plain")
        #expect(throws: PolicyError.self) { try writer.writeHeader(plain) }
    }

    @Test func delegationSpecsFromTheCommandLine() throws {
        let hex = Hex.encode(webKeys.publicKey.raw)
        let d = try Delegation(spec: "max-valid=30d,kinds=script,key=\(hex),name=web", canonical: false)
        #expect(d.description == "name=web,key=\(hex),kinds=script,max-valid=2592000s")
        for bad in ["name=web", "key=\(hex)", "name=Web,key=\(hex)", "name=web,key=abc", "name=web,key=\(hex),kinds=binary",
                    "name=web,key=\(hex),max-entries=-1", "name=web,key=\(hex),colour=red"] {
            #expect(throws: SpecError.self, "\(bad)") { try Delegation(spec: bad, canonical: false) }
        }
    }

    @Test func aBaseAndItsSupplementsComposeAndADenyInTheBaseWins() throws {
        try layer("base", allow: ["a", "b"], deny: ["blocked"], delegations: [web()])
        try layer("web", allow: ["c", "blocked", "a"], supplementOf: "base", key: webKeys)
        let composed = try compose()
        #expect(composed.allowed.count == 4, "merged without repeats: a, b, c, blocked")
        #expect(composed.allowed.sorted == composed.allowed.sorted.sorted())
        #expect(composed.layers.map(\.name) == ["base", "web"])
        #expect(composed.lookup(digest("a")) == .known && composed.lookup(digest("c")) == .known)
        #expect(composed.lookup(digest("blocked")) == .blocklisted, "a deny in any layer wins")
        #expect(composed.lookup(digest("d")) == .unknown)
        #expect(composed.allowedSizes?.mayContain(10) == true)
    }

    @Test func everySupplementRuleIsEnforced() throws {
        func expectRefused(_ why: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation, _ setUp: (String) throws -> Void) throws {
            let set = "case-\(why.split(separator: " ").joined(separator: "-"))"
            try setUp(set)
            #expect(sourceLocation: sourceLocation, performing: { _ = try compose(set) }, throws: { error in
                let text = (error as? PolicyError)?.description ?? "\(error)"
                #expect(text.contains(message), "\(why): \(text)", sourceLocation: sourceLocation)
                return true
            })
        }
        try expectRefused("undelegated key", "delegates 'web' to key \(webKeys.publicKey.keyID)") { set in
            try layer("base", allow: ["a"], delegations: [web()], directory: set)
            try layer("web", allow: ["b"], supplementOf: "base", key: baseKeys, directory: set)
        }
        try expectRefused("no delegation", "delegates no key for the supplement 'web'") { set in
            try layer("base", allow: ["a"], directory: set)
            try layer("web", allow: ["b"], supplementOf: "base", key: webKeys, directory: set)
        }
        try expectRefused("a deny", "may only add allow entries") { set in
            try layer("base", allow: ["a"], delegations: [web()], directory: set)
            try layer("web", allow: ["b"], deny: ["a"], supplementOf: "base", key: webKeys, directory: set)
        }
        try expectRefused("too many entries", "more than the 1 its delegation allows") { set in
            try layer("base", allow: ["a"], delegations: [web(maximumEntries: 1)], directory: set)
            try layer("web", allow: ["b", "c"], supplementOf: "base", key: webKeys, directory: set)
        }
        try expectRefused("a kind not delegated", "kind script, which its delegation does not allow") { set in
            try layer("base", allow: ["a"], delegations: [web(kinds: [.elfExec])], directory: set)
            try layer("web", allow: ["b"], kind: .script, supplementOf: "base", key: webKeys, directory: set)
        }
        try expectRefused("no expiry", "it never expires") { set in
            try layer("base", allow: ["a"], delegations: [web(maximumValidity: 86_400)], directory: set)
            try layer("web", allow: ["b"], supplementOf: "base", key: webKeys, directory: set)
        }
        try expectRefused("too long valid", "valid for 2d, more than the 1d") { set in
            try layer("base", allow: ["a"], delegations: [web(maximumValidity: 86_400)], directory: set)
            try layer("web", allow: ["b"], supplementOf: "base", expires: Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch + 2 * 86_400),
                      key: webKeys, directory: set)
        }
        try expectRefused("another base", "supplements 'other'") { set in
            try layer("base", allow: ["a"], delegations: [web()], directory: set)
            try layer("web", allow: ["b"], supplementOf: "other", key: webKeys, directory: set)
        }
        try expectRefused("two bases", "more than one base layer") { set in
            try layer("base", allow: ["a"], directory: set)
            try layer("second", allow: ["b"], directory: set)
        }
        try expectRefused("name mismatch", "named for layer 'web' but its header says 'base'") { set in
            try layer("base", allow: ["a"], directory: set)
            try layer("base", serial: 2, allow: ["a"], directory: set, file: "web.policy")
        }
        try expectRefused("issued in the future", "in the future of this host's clock") { set in
            try layer("base", allow: ["a"], delegations: [web(maximumValidity: 86_400)], directory: set)
            let later = Timestamp.now.secondsSinceEpoch + 10 * 365 * 86_400
            try layer("web", allow: ["b"], supplementOf: "base", expires: Timestamp(secondsSinceEpoch: later + 3600), issued: Timestamp(secondsSinceEpoch: later),
                      key: webKeys, directory: set)
        }
        try expectRefused("shrink in a supplement", "only the base may") { set in
            try layer("base", allow: ["a"], delegations: [web()], directory: set)
            try layer("web", allow: ["b"], supplementOf: "base", key: webKeys, shrink: true, directory: set)
        }
        try expectRefused("tampered supplement", "signature does not verify") { set in
            try layer("base", allow: ["a"], delegations: [web()], directory: set)
            let path = try layer("web", allow: ["b"], supplementOf: "base", key: webKeys, directory: set)
            let text = try String(contentsOfFile: path, encoding: .utf8)
            try text.replacingOccurrences(of: digest("b").hex, with: digest("evil").hex).write(toFile: path, atomically: true, encoding: .utf8)
        }
    }

    /// A supplement past its expiry, or for other hosts, is left out (its entries lose their allow) while the base and
    /// the other supplements apply: one lapsed team must not hold the fleet's base back.
    @Test func expiredAndOtherHostsSupplementsAreLeftOut() throws {
        try layer("base", allow: ["a"], delegations: [web(), Delegation(name: "db", publicKey: webKeys.publicKey)])
        try layer("web", allow: ["w"], supplementOf: "base", expires: Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch - 10),
                  issued: Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch - 100), key: webKeys)
        var header = PolicyHeader(serial: 1, issued: .now, keyID: webKeys.publicKey.keyID, scope: ["db-*"])
        header.name = "db"; header.supplementOf = "base"
        try PolicyWriter.write(path: dir.file("set/db.policy"), header: header,
                               allows: [AllowEntry(digest: digest("d"), size: 10, kind: .elfExec, origin: .manual, path: Array("/opt/d".utf8))],
                               denies: [], signingKey: webKeys.privateKey)
        let onWeb = try PolicyLayers.load(directory: dir.file("set"), key: baseKeys.publicKey, hostname: "web-1")
        #expect(onWeb.layers.map(\.name) == ["base"])
        #expect(onWeb.skippedLayers.count == 2 && onWeb.skippedLayers.contains { $0.hasPrefix("web 1 (expired at") }, "\(onWeb.skippedLayers)")
        #expect(onWeb.lookup(digest("w")) == .unknown && onWeb.lookup(digest("d")) == .unknown)
        let onDB = try PolicyLayers.load(directory: dir.file("set"), key: baseKeys.publicKey, hostname: "db-1")
        #expect(onDB.layers.map(\.name) == ["base", "db"] && onDB.lookup(digest("d")) == .known)
    }

    /// What a supplement cannot grant: fs-verity pairings and interpreter declarations are the base's alone, and a
    /// kind-limited supplement's entries carry their limit into the decision.
    @Test func supplementsGrantOnlyDigestsWithinTheirKinds() throws {
        try layer("base", allow: ["a", "shared"], delegations: [web(kinds: [.script])])
        var header = PolicyHeader(serial: 1, issued: .now, keyID: webKeys.publicKey.keyID)
        header.name = "web"; header.supplementOf = "base"
        let entries = [AllowEntry(digest: digest("s"), size: 10, kind: .script, origin: .manual, path: Array("/opt/s".utf8),
                                  verity: digest("blocked-file-verity"), interpreter: .perl),
                       AllowEntry(digest: digest("shared"), size: 10, kind: .script, origin: .manual, path: Array("/opt/shared".utf8))]
        try PolicyWriter.write(path: dir.file("set/web.policy"), header: header, allows: entries, denies: [], signingKey: webKeys.privateKey)
        let composed = try compose()
        #expect(composed.lookup(digest("s")) == .known)
        #expect(composed.verity.contentDigest(forVerity: digest("blocked-file-verity")) == nil, "no verity pairing from a supplement")
        #expect(composed.interpreters.isEmpty, "no interpreter declaration from a supplement")
        #expect(composed.kindLimits.kinds(of: digest("s")) == FileKind.script.bit)
        #expect(composed.kindLimits.kinds(of: digest("shared")) == nil, "the base allows it as any kind")
        #expect(composed.kindLimits.kinds(of: digest("a")) == nil)
    }

    @Test func recordsRefuseRollbacksAndShrinkingPerLayer() throws {
        func layerInfo(_ name: String, serial: UInt64, count: Int, shrink: Bool = false, scope: [String] = []) -> PolicyLayer {
            var header = PolicyHeader(serial: serial, issued: .now, keyID: "0000000000000000", scope: scope, allowCount: count)
            header.name = name
            if name == "web" { header.supplementOf = "base" }
            header.shrinkPermitted = shrink
            return PolicyLayer(name: name, header: header, path: "/p/\(name).policy")
        }
        var records = LayerRecords().updated(with: [layerInfo("base", serial: 5, count: 1000), layerInfo("web", serial: 3, count: 10)])
        try records.write(stateDirectory: dir.file("state"))
        records = try LayerRecords.read(stateDirectory: dir.file("state"))
        #expect(records.byName["base"] == .init(serial: 5, allowCount: 1000))
        #expect(records.refusal(of: [layerInfo("base", serial: 6, count: 900)], hostname: "h", allowRollback: false) == nil)
        #expect(records.refusal(of: [layerInfo("web", serial: 2, count: 10)], hostname: "h", allowRollback: false)?.contains("rollback refused") == true,
                "each name has its own serial")
        #expect(records.refusal(of: [layerInfo("web", serial: 2, count: 10)], hostname: "h", allowRollback: true) == nil)
        #expect(records.refusal(of: [layerInfo("base", serial: 6, count: 400)], hostname: "h", allowRollback: false)?.contains("shrink guard") == true)
        #expect(records.refusal(of: [layerInfo("base", serial: 6, count: 400, shrink: true)], hostname: "h", allowRollback: false) == nil)
        #expect(records.refusal(of: [layerInfo("web", serial: 4, count: 1)], hostname: "h", allowRollback: false) == nil, "too small for the guard")
        #expect(records.refusal(of: [layerInfo("base", serial: 7, count: 1000, scope: ["db-*"])], hostname: "web-1", allowRollback: false)?
            .contains("is for hosts db-*") == true)
        // The base role: a base under another name cannot come back older, nor shrink the base unannounced.
        #expect(records.refusal(of: [layerInfo("old-base", serial: 1, count: 1000)], hostname: "h", allowRollback: false)?
            .contains("the last applied on this host for the base (rollback refused)") == true)
        #expect(records.refusal(of: [layerInfo("new-base", serial: 9, count: 10)], hostname: "h", allowRollback: false)?.contains("shrink guard") == true)
        try dir.write("state/layer-serials", "base five 1000\n")
        #expect(throws: PolicyError.self, "an unreadable record refuses rather than switching rollback protection off") {
            try LayerRecords.read(stateDirectory: dir.file("state"))
        }
    }

    @Test func theTimestampIsCanonicalSignedAndTilesTheFleet() throws {
        let stampKeys = try TestKeys(in: dir, name: "timestamp")
        let files = [BundleTimestamp.File(digest: digest("base2"), size: 100, layer: "base", serial: 2),
                     BundleTimestamp.File(digest: digest("base1"), size: 90, layer: "base", serial: 1),
                     BundleTimestamp.File(digest: digest("web"), size: 50, layer: "web", serial: 7)]
        let now = Timestamp.now
        let timestamp = BundleTimestamp(version: 3, issued: now, expires: Timestamp(secondsSinceEpoch: now.secondsSinceEpoch + 3600), keyID: stampKeys.publicKey.keyID,
                                        files: files, rings: [.init(name: "canary", from: 0, to: 100, serves: .newest), .init(name: "rest", from: 100, to: 10_000, serves: .previous)])
        let bytes = try timestamp.signed(with: stampKeys.privateKey)
        let parsed = try BundleTimestamp.verified(bytes, key: stampKeys.publicKey, source: "t")
        #expect(parsed == timestamp)
        #expect(parsed.files.map(\.serial) == [1, 2, 7], "sorted by layer and serial")
        let canary = parsed.selection(for: parsed.ring(forBucket: 50)!), rest = parsed.selection(for: parsed.ring(forBucket: 9999)!)
        #expect(canary.install.map(\.serial) == [2, 7] && canary.candidates.isEmpty)
        #expect(rest.install.map(\.serial) == [1, 7] && rest.candidates.map(\.serial) == [2])

        let text = String(decoding: bytes, as: UTF8.self)
        func refused(_ edited: String, _ code: SyncError.Code, key: Ed25519PublicKey? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(sourceLocation: sourceLocation, performing: { _ = try BundleTimestamp.verified(Array(edited.utf8), key: key ?? stampKeys.publicKey, source: "t") },
                    throws: { ($0 as? SyncError)?.code == code })
        }
        refused(text.replacingOccurrences(of: "version 3", with: "version 4"), .badSignature)
        refused(text.replacingOccurrences(of: "version 3", with: "version 03"), .badTimestamp)
        refused(text.replacingOccurrences(of: "\nring canary", with: "\nring  canary"), .badTimestamp)
        refused(text, .wrongKey, key: baseKeys.publicKey)
        refused(String(text.dropLast()), .badTimestamp)

        // Rings must tile 0 to 10000; at most two serials per layer.
        var gap = timestamp
        gap.rings = [.init(name: "canary", from: 0, to: 100, serves: .newest), .init(name: "rest", from: 200, to: 10_000, serves: .previous)]
        #expect(gap.structuralProblem?.contains("tile") == true)
        var three = timestamp
        three.files.append(.init(digest: digest("base3"), size: 1, layer: "base", serial: 3))
        #expect(three.structuralProblem?.contains("at most two") == true)
    }

    @Test func rolloutBucketsAndPercentages() {
        let buckets = (0..<2000).map { rolloutBucket(machineID: "machine-\($0)") }
        #expect(buckets.allSatisfy { (0..<10_000).contains($0) })
        #expect(rolloutBucket(machineID: "machine-7") == buckets[7], "stable: no coordination, same ring every time")
        let inOnePercent = buckets.filter { $0 < 100 }.count
        #expect((5...45).contains(inOnePercent), "about 1 % of 2000 hosts: \(inOnePercent)")
        #expect(Publisher.basisPoints(percent: "1") == 100 && Publisher.basisPoints(percent: "0.5") == 50 && Publisher.basisPoints(percent: "12.25") == 1225)
        #expect(Publisher.basisPoints(percent: "101") == nil && Publisher.basisPoints(percent: "1.234") == nil && Publisher.basisPoints(percent: "-1") == nil)
    }
}
