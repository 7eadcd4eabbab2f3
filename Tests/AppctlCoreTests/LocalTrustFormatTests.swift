import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// Issue 11: format version 4's trust-source header lines, and the overlay file format.
@Suite struct LocalTrustFormatTests {
    let debian = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8"

    @Test func aptSourceSpecsParseOneCanonicalSpelling() throws {
        let rule = try AptSourceRule(spec: "mode=auto,suite=bookworm,signer=\(debian.lowercased()),origin=Debian", canonical: false)
        #expect(rule.description == "signer=\(debian),origin=Debian,suite=bookworm,mode=auto")
        #expect(try AptSourceRule(spec: rule.description, canonical: true) == rule)
        #expect(try AptSourceRule(spec: "signer=\(debian)", canonical: true).mode == .report, "no mode: report only")
        for bad in ["signer=ABC", "origin=Debian", "signer=\(debian),mode=report", "signer=\(debian),mode=yes",
                    "signer=\(debian),origin=a b", "signer=\(debian),origin=", "signer=\(debian),colour=blue", "signer=\(debian),signer=\(debian)"] {
            #expect(throws: SpecError.self, "\(bad)") { try AptSourceRule(spec: bad, canonical: false) }
        }
        // The reader of signed files takes only the canonical spelling.
        for other in ["signer=\(debian.lowercased())", "signer=\(debian),mode=auto,origin=Debian"] {
            #expect(throws: SpecError.self, "\(other)") { try AptSourceRule(spec: other, canonical: true) }
        }
        #expect(rule.matches(signers: [debian], origin: "Debian", suite: "oldstable", codename: "bookworm"), "suite= matches the codename too")
        #expect(!rule.matches(signers: ["0000000000000000000000000000000000000000"], origin: "Debian", suite: "bookworm", codename: nil))
        #expect(!rule.matches(signers: [debian], origin: "Debiam", suite: "bookworm", codename: nil))
    }

    /// Review finding: the most restrictive matching rule governs, whatever the sort order of the lines.
    @Test func theMostRestrictiveMatchingRuleGoverns() throws {
        let auto = try AptSourceRule(spec: "signer=\(debian),mode=auto", canonical: true)
        let gateSid = try AptSourceRule(spec: "signer=\(debian),suite=sid,mode=gate", canonical: true)
        let report = try AptSourceRule(spec: "signer=\(debian),origin=Other", canonical: true)
        let rules = [auto, gateSid, report].sorted()
        #expect(AptSourceRule.governing(rules, signers: [debian], origin: "Debian", suite: "sid", codename: nil) == gateSid)
        #expect(AptSourceRule.governing(rules, signers: [debian], origin: "Debian", suite: "bookworm", codename: nil) == auto)
        #expect(AptSourceRule.governing(rules, signers: [debian], origin: "Other", suite: "bookworm", codename: nil) == report)
        #expect(AptSourceRule.governing(rules, signers: ["0000000000000000000000000000000000000000"], origin: "Debian", suite: nil, codename: nil) == nil)
    }

    @Test func maintenanceSpecs() throws {
        let rule = try MaintenanceRule(spec: "max=2h,paths=/opt:/usr/local", canonical: false)
        #expect(rule.description == "max=7200s,paths=/opt:/usr/local")
        #expect(try MaintenanceRule(spec: rule.description, canonical: true) == rule)
        for bad in ["paths=/opt", "max=0", "max=2x", "max=400d", "max=1h,paths=opt", "max=1h,paths=/opt/", "max=1h,paths=/a/../b"] {
            #expect(throws: SpecError.self, "\(bad)") { try MaintenanceRule(spec: bad, canonical: false) }
        }
        #expect(throws: SpecError.self) { try MaintenanceRule(spec: "max=2h", canonical: true) }
        #expect(parseDuration("90m") == 5400 && parseDuration("45") == 45 && parseDuration("010s") == nil)
    }

    @Test func version4RoundTripsAndIsSigned() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        var header = PolicyHeader(serial: 3, issued: .now, keyID: keys.publicKey.keyID)
        header.aptSources = [try AptSourceRule(spec: "signer=\(debian),origin=Debian,mode=auto", canonical: true),
                             try AptSourceRule(spec: "signer=\(debian),origin=Debian,suite=bookworm-security,mode=gate", canonical: true)].sorted()
        header.maintenance = try MaintenanceRule(spec: "max=3600s,paths=/opt", canonical: true)
        let entry = AllowEntry(digest: SHA256Digest.of(Array("x".utf8)), size: 1, kind: .elfExec, origin: .manual, path: Array("/x".utf8))
        try PolicyWriter.write(path: dir.file("p.txt"), header: header, allows: [entry], denies: [], signingKey: keys.privateKey)
        let text = try String(contentsOfFile: dir.file("p.txt"), encoding: .utf8)
        #expect(text.hasPrefix("appctl-policy 4\n"))
        #expect(text.contains("\napt-source signer=\(debian),origin=Debian,mode=auto\napt-source signer=\(debian),origin=Debian,suite=bookworm-security,mode=gate\nmaintenance max=3600s,paths=/opt\nallow-count 1\n"))
        let loaded = try LoadedPolicy.load(path: dir.file("p.txt"), key: keys.publicKey)
        #expect(loaded.header.aptSources == header.aptSources)
        #expect(loaded.header.maintenance == header.maintenance)
        // The lines are signed: changing one breaks the signature.
        try text.replacingOccurrences(of: "mode=gate", with: "mode=auto").write(toFile: dir.file("q.txt"), atomically: false, encoding: .utf8)
        #expect(throws: PolicyError.self) { try LoadedPolicy.load(path: dir.file("q.txt"), key: keys.publicKey) }
    }

    /// Each refusal names the line: version 4 without trust lines, trust lines before version 4, disorder, repeats.
    @Test func version4RefusalsNameTheLine() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let body = "issued 2026-01-01T00:00:00Z\n"
        let source = "apt-source signer=\(debian),mode=auto\n"
        let cases: [(String, String, Int)] = [
            ("appctl-policy 4\n" + body + "allow-count 0\ndeny-count 0\n", "no apt-source, apt-unverified or maintenance line", 3),
            ("appctl-policy 3\n" + body + source + "allow-count 0\ndeny-count 0\n", "needs format version 4", 3),
            ("appctl-policy 4\n" + body + "maintenance max=60s\n" + source + "allow-count 0\ndeny-count 0\n", "out of order", 4),
            ("appctl-policy 4\n" + body + source + source + "allow-count 0\ndeny-count 0\n", "out of canonical order or repeated", 4),
            ("appctl-policy 4\n" + body + "apt-source signer=\(debian.lowercased())\nallow-count 0\ndeny-count 0\n", "uppercase", 3),
            ("appctl-policy 4\n" + body + "maintenance max=1h\nallow-count 0\ndeny-count 0\n", "in seconds", 3),
        ]
        for (text, message, line) in cases {
            try dir.write("bad.txt", text)
            do {
                _ = try PolicyReader(path: dir.file("bad.txt")).read()
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(message), "\(error)")
                #expect(error.description.contains("bad.txt:\(line):"), "\(error)")
            }
        }
    }

    @Test func overlayFilesRoundTripAndRefuseDamage() throws {
        let file = OverlayFile(digest: SHA256Digest.of(Array("jq".utf8)), size: 30_800, kind: .elfExec, escapedPath: "/usr/bin/jq")
        let package = OverlayPackage(name: "jq", version: "1.6-2.1+deb12u3", architecture: "amd64", debDigest: SHA256Digest.of(Array("deb".utf8)),
                                     signer: debian, origin: "Debian", suite: "oldstable-security", codename: "bookworm-security", files: [file])
        let overlay = Overlay(layer: "apt", packages: [package])
        let bytes = overlay.serialized()
        #expect(try Overlay.parse(bytes, name: "o") == overlay)
        let text = String(decoding: bytes, as: UTF8.self)
        for (damaged, why) in [(String(text.dropLast()), "truncated"), (text.replacingOccurrences(of: " 1\nfile", with: " 2\nfile"), "truncated"),
                               (text.replacingOccurrences(of: "elf-exec", with: "elf"), "malformed file line"),
                               ("appctl-overlay 2\n" + text.split(separator: "\n", maxSplits: 1)[1], "not an appctl overlay")] {
            #expect(throws: OverlayError.self, "\(why)") { try Overlay.parse(Array(damaged.utf8), name: "o") }
        }
        // Only what the policy's rules trust becomes allowed.
        let trusted = OverlayTable([overlay], rules: [try AptSourceRule(spec: "signer=\(debian),origin=Debian,suite=bookworm-security,mode=auto", canonical: true)])
        #expect(trusted.layer(of: file.digest) == "overlay:apt" && trusted.sizes.contains(30_800))
        for rules in [[], [try AptSourceRule(spec: "signer=\(debian),origin=Debian", canonical: true)],
                      [try AptSourceRule(spec: "signer=\(debian),origin=Debian,suite=bookworm,mode=auto", canonical: true)],
                      [try AptSourceRule(spec: "signer=\(debian),origin=Debian,mode=gate", canonical: true)]] {
            let table = OverlayTable([overlay], rules: rules)
            #expect(table.layer(of: file.digest) == nil, "\(rules)")
            #expect(table.untrustedPackages == ["jq=1.6-2.1+deb12u3:amd64"])
        }
        #expect(!OverlayTable().containsEveryDigest(of: trusted) && trusted.containsEveryDigest(of: OverlayTable()))
    }
}
