// Over 400 lines for a reason: one table of malformed files (every refusal the reader can give, with its line)
// and the round trips of the three format versions belong together; they pin one file format.
import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

private let fixedTime = Timestamp(secondsSinceEpoch: 1_790_000_000)

private func digest(_ seed: String) -> SHA256Digest { SHA256Digest.of(Array(seed.utf8)) }

/// A small policy with the awkward cases in it: a path with a space, a newline, a non-UTF-8 byte and a '%'.
private func sampleEntries() -> ([AllowEntry], [DenyEntry]) {
    let allows = [
        AllowEntry(digest: digest("ls"), size: 138_208, kind: .elfExec, origin: .dpkg(package: "coreutils"), path: Array("/usr/bin/ls".utf8)),
        AllowEntry(digest: digest("libc"), size: 1_922_136, kind: .elfLib, origin: .dpkg(package: "libc6"), path: Array("/usr/lib/x86_64-linux-gnu/libc.so.6".utf8)),
        AllowEntry(digest: digest("space"), size: 10, kind: .script, origin: .local, path: Array("/srv/app/run me.sh".utf8)),
        AllowEntry(digest: digest("weird"), size: 0, kind: .otherExec, origin: .manual, path: Array("/opt/x/new\nline%\u{7f}".utf8) + [0xff, 0xfe]),
        AllowEntry(digest: digest("ls"), size: 138_208, kind: .elfExec, origin: .local, path: Array("/usr/local/bin/ls-copy".utf8)),
    ]
    let denies = [DenyEntry(digest: digest("evil"), note: "known miner, ticket SEC-12"), DenyEntry(digest: digest("bad"), note: nil)]
    return (allows, denies)
}

private func writeSample(_ dir: TemporaryDirectory, name: String = "policy.txt", keys: TestKeys?, serial: UInt64 = 7,
                         expires: Timestamp? = nil) throws -> String {
    let (allows, denies) = sampleEntries()
    let header = PolicyHeader(serial: keys == nil ? nil : serial, issued: fixedTime, expires: expires, keyID: keys?.publicKey.keyID,
                              scope: ["web-*", "db-0?"], description: "golden image 2026-11 % test")
    try PolicyWriter.write(path: dir.file(name), header: header, allows: allows, denies: denies, signingKey: keys?.privateKey)
    return dir.file(name)
}

@Suite struct PolicyFormatTests {
    @Test func roundTripKeepsEveryField() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        let path = try writeSample(dir, keys: keys, expires: Timestamp(secondsSinceEpoch: 4_000_000_000))
        var allows: [AllowEntry] = []
        var denies: [DenyEntry] = []
        let result = try PolicyReader(path: path).read(onAllow: { allows.append($0.entry()) }, onDeny: { e, _ in denies.append(e) })
        let (wantAllows, wantDenies) = sampleEntries()
        #expect(allows == wantAllows.sorted(by: AllowEntry.canonicallyOrdered))
        #expect(denies == wantDenies.sorted { $0.digest < $1.digest })
        #expect(result.header.serial == 7)
        #expect(result.header.issued == fixedTime)
        #expect(result.header.scope == ["web-*", "db-0?"])
        #expect(result.header.description == "golden image 2026-11 % test")
        #expect(result.header.keyID == keys.publicKey.keyID)
        #expect(result.signature?.count == 64)
        // The weird path survives escaping byte for byte.
        let weird = allows.first { $0.origin == .manual }!
        #expect(PathEscaping.unescape(weird.escapedPath.utf8, token: true) == Array("/opt/x/new\nline%\u{7f}".utf8) + [0xff, 0xfe])
        let loaded = try LoadedPolicy.load(path: path, key: keys.publicKey, now: fixedTime)
        #expect(loaded.lookup(digest("ls")) == .known)
        #expect(loaded.lookup(digest("evil")) == .blocklisted)
        #expect(loaded.lookup(digest("nothing")) == .unknown)
        #expect(loaded.allowed.count == 4)  // the same content at two paths is one digest
    }

    @Test func writingIsCanonical() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        let a = try writeSample(dir, name: "a.txt", keys: keys)
        // Same content given in another order: identical bytes (Ed25519 signatures are deterministic).
        let (allows, denies) = sampleEntries()
        let header = PolicyHeader(serial: 7, issued: fixedTime, keyID: keys.publicKey.keyID, scope: ["web-*", "db-0?"],
                                  description: "golden image 2026-11 % test")
        try PolicyWriter.write(path: dir.file("b.txt"), header: header, allows: allows.reversed(), denies: denies.reversed(),
                               signingKey: keys.privateKey)
        #expect(try dir.read("a.txt") == dir.read("b.txt"))
        // Every line is plain printable ASCII, one record per line.
        let text = String(decoding: try dir.read("a.txt"), as: UTF8.self)
        #expect(text.hasPrefix("appctl-policy 1\nserial 7\nissued 2026-09-21T"))
        #expect(text.utf8.allSatisfy { $0 == 10 || ($0 >= 0x20 && $0 < 0x7f) })
        #expect(text.contains("allow \(digest("space").hex) 10 script local /srv/app/run%20me.sh\n"))
        _ = a
    }

    @Test func unsignedInventoryHasNoSignatureAndIsRefusedForEnforcement() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        let path = try writeSample(dir, keys: nil)
        let result = try PolicyReader(path: path).read()
        #expect(result.signature == nil)
        #expect(result.header.serial == nil)
        let error = #expect(throws: PolicyError.self) { try LoadedPolicy.load(path: path, key: keys.publicKey, now: fixedTime) }
        #expect(error?.code == .unsigned)
    }

    @Test func everySingleFlippedByteIsRejected() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        let path = try writeSample(dir, keys: keys)
        let original = try dir.read("policy.txt")
        var accepted: [Int] = []
        for i in original.indices {
            for bit: UInt8 in [0x01, 0x20] {
                var bytes = original
                bytes[i] ^= bit
                try dir.write("flipped.txt", bytes)
                do {
                    _ = try LoadedPolicy.load(path: dir.file("flipped.txt"), key: keys.publicKey, now: fixedTime)
                    accepted.append(i)
                } catch {
                    // Any refusal is correct; the message must be one line naming the file.
                    #expect(!error.description.contains("\n"))
                    #expect(error.description.hasPrefix(dir.file("flipped.txt")))
                }
            }
        }
        #expect(accepted.isEmpty, "flipped bytes accepted at offsets \(accepted)")
        _ = path
    }

    @Test func everyTruncationIsRejected() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        _ = try writeSample(dir, keys: keys)
        let original = try dir.read("policy.txt")
        for length in 0..<original.count {
            try dir.write("cut.txt", Array(original[0..<length]))
            #expect(throws: PolicyError.self, "truncated to \(length) bytes") {
                try LoadedPolicy.load(path: dir.file("cut.txt"), key: keys.publicKey, now: fixedTime)
            }
        }
        // An unsigned inventory cut at a line boundary is caught by the header's counts.
        _ = try writeSample(dir, name: "inv.txt", keys: nil)
        let inventory = try dir.read("inv.txt")
        let lastLineStart = inventory.dropLast().lastIndex(of: 10)! + 1
        try dir.write("inv-cut.txt", Array(inventory[0..<lastLineStart]))
        let error = #expect(throws: PolicyError.self) { try PolicyReader(path: dir.file("inv-cut.txt")).read() }
        #expect(error?.code == .truncated)
    }

    @Test func wrongKeyIsNamed() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        let other = try TestKeys(in: dir, name: "other")
        let path = try writeSample(dir, keys: keys)
        let error = #expect(throws: PolicyError.self) { try LoadedPolicy.load(path: path, key: other.publicKey, now: fixedTime) }
        #expect(error?.code == .wrongKey)
        #expect(error?.description.contains(keys.publicKey.keyID) == true)
        #expect(error?.description.contains(other.publicKey.keyID) == true)
    }

    @Test func forgedKeyIDStillFailsTheSignature() throws {
        // An attacker who rewrites key-id to the trusted key's id gains nothing: the signature is checked too.
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let trusted = try TestKeys(in: dir)
        let attacker = try TestKeys(in: dir, name: "attacker")
        let (allows, denies) = sampleEntries()
        let header = PolicyHeader(serial: 99, issued: fixedTime, keyID: attacker.publicKey.keyID)
        try PolicyWriter.write(path: dir.file("forged.txt"), header: header, allows: allows, denies: denies, signingKey: attacker.privateKey)
        var text = String(decoding: try dir.read("forged.txt"), as: UTF8.self)
        text = text.replacingOccurrences(of: attacker.publicKey.keyID, with: trusted.publicKey.keyID)
        try dir.write("forged.txt", text)
        let error = #expect(throws: PolicyError.self) { try LoadedPolicy.load(path: dir.file("forged.txt"), key: trusted.publicKey, now: fixedTime) }
        #expect(error?.code == .badSignature)
    }

    @Test func expiredPolicyIsRefused() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        let path = try writeSample(dir, keys: keys, expires: Timestamp(secondsSinceEpoch: fixedTime.secondsSinceEpoch + 60))
        _ = try LoadedPolicy.load(path: path, key: keys.publicKey, now: fixedTime)
        let error = #expect(throws: PolicyError.self) {
            try LoadedPolicy.load(path: path, key: keys.publicKey, now: Timestamp(secondsSinceEpoch: fixedTime.secondsSinceEpoch + 61))
        }
        #expect(error?.code == .expired)
    }

    static let header = "appctl-policy 1\nissued 2026-01-01T00:00:00Z\nallow-count 1\ndeny-count 0\n"
    static let header2 = header.replacingOccurrences(of: "appctl-policy 1", with: "appctl-policy 2")
    static let header3 = header.replacingOccurrences(of: "appctl-policy 1", with: "appctl-policy 3")
    static let goodAllow = "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x\n"

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String, text: String, code: PolicyError.Code, line: Int?
        var testDescription: String { name }
    }

    /// Each malformed file, the error code, and the line it must name.
    static let malformed: [Case] = [(String, String, PolicyError.Code, Int?)]([
        ("empty file", "", .empty, nil),
        ("garbage", "\u{7f}ELF\u{2}\u{1}\u{1}\n", .notAPolicy, 1),
        ("future version", "appctl-policy 7\n", .unsupportedVersion, 1),
        ("interpreter field in version 2", header2 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x fsverity-sha256:\(String(repeating: "cd", count: 32)) interpreter:python\n", .malformed, 5),
        ("interpreter field in version 1", header + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x interpreter:python\n", .malformed, 5),
        ("unknown interpreter", header3 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x interpreter:cobol\n", .malformed, 5),
        ("interpreter before the verity digest", header3 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x interpreter:perl fsverity-sha256:\(String(repeating: "cd", count: 32))\n", .malformed, 5),
        ("field after the interpreter", header3 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x interpreter:perl x\n", .malformed, 5),
        ("version 3 without an interpreter", header3 + goodAllow, .malformed, 1),
        ("verity field in version 1", header + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x fsverity-sha256:\(String(repeating: "cd", count: 32))\n", .malformed, 5),
        ("uppercase verity digest", header2 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x fsverity-sha256:\(String(repeating: "CD", count: 32))\n", .malformed, 5),
        ("short verity digest", header2 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x fsverity-sha256:cdcd\n", .malformed, 5),
        ("unknown verity algorithm", header2 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x fsverity-sha512:\(String(repeating: "cd", count: 32))\n", .malformed, 5),
        ("field after the verity digest", header2 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x fsverity-sha256:\(String(repeating: "cd", count: 32)) x\n", .malformed, 5),
        ("version 2 without a verity digest", header2 + goodAllow, .malformed, 1),
        ("empty path before verity digest", header2 + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local  fsverity-sha256:\(String(repeating: "cd", count: 32))\n", .malformed, 5),
        ("unknown header field", "appctl-policy 1\nissued 2026-01-01T00:00:00Z\ncolour blue\n", .malformed, 3),
        ("missing issued", "appctl-policy 1\nallow-count 0\ndeny-count 0\n", .malformed, 2),
        ("serial zero", "appctl-policy 1\nserial 0\n", .badSerial, 2),
        ("serial negative", "appctl-policy 1\nserial -4\n", .badSerial, 2),
        ("serial text", "appctl-policy 1\nserial seven\n", .badSerial, 2),
        ("serial leading zero", "appctl-policy 1\nserial 07\n", .badSerial, 2),
        ("serial too large", "appctl-policy 1\nserial 99999999999999999999\n", .badSerial, 2),
        ("bad time", "appctl-policy 1\nissued 2026-02-30T00:00:00Z\n", .malformed, 2),
        ("header out of order", "appctl-policy 1\nissued 2026-01-01T00:00:00Z\nserial 4\n", .outOfOrder, 3),
        ("uppercase hash", header + "allow \(String(repeating: "AB", count: 32)) 10 elf-exec local /bin/x\n", .malformed, 5),
        ("short hash", header + "allow abcd 10 elf-exec local /bin/x\n", .malformed, 5),
        ("unknown kind", header + "allow \(String(repeating: "ab", count: 32)) 10 java local /bin/x\n", .malformed, 5),
        ("unknown origin", header + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec rpm:bash /bin/x\n", .malformed, 5),
        ("size not a number", header + "allow \(String(repeating: "ab", count: 32)) 1e3 elf-exec local /bin/x\n", .malformed, 5),
        ("unescaped space in path", header + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x y\n", .malformed, 5),
        ("needless escape", header + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/%41\n", .malformed, 5),
        ("missing path", header + "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local\n", .malformed, 5),
        ("CRLF line", header.replacingOccurrences(of: "deny-count 0\n", with: "deny-count 0\r\n"), .malformed, 4),
        ("extra entry", header + goodAllow + goodAllow.replacingOccurrences(of: "/bin/x", with: "/bin/y"), .countMismatch, 6),
        ("missing newline", header + String(goodAllow.dropLast()), .truncated, 5),
        ("content after signature", header + goodAllow + "signature \(String(repeating: "00", count: 64))\nallow x\n", .malformed, 7),
        ("short signature", header + goodAllow + "signature abcd\n", .malformed, 6),
    ]).map { Case(name: $0.0, text: $0.1, code: $0.2, line: $0.3) }

    @Test(arguments: malformed)
    func malformedInputIsRejectedWithFileAndLine(_ c: Case) throws {
        let (name, text, code, line) = (c.name, c.text, c.code, c.line)
        let dir = TemporaryDirectory(); defer { dir.remove() }
        try dir.write("bad.txt", text)
        let error = #expect(throws: PolicyError.self, "\(name)") { try PolicyReader(path: dir.file("bad.txt")).read() }
        #expect(error?.code == code, "\(name): \(String(describing: error))")
        #expect(error?.line == line, "\(name): \(String(describing: error))")
        #expect(error?.description.hasPrefix(dir.file("bad.txt") + (line.map { ":\($0):" } ?? ":")) == true)
        #expect(error?.description.contains("\n") == false)
    }

    @Test func verityDigestsNeedVersion2AndRoundTrip() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        var (allows, denies) = sampleEntries()
        // Without fs-verity digests the writer keeps version 1, readable by every appctl.
        let v1 = try writeSample(dir, name: "v1.txt", keys: keys)
        #expect(String(decoding: try dir.read("v1.txt"), as: UTF8.self).hasPrefix("appctl-policy 1\n"))
        allows[0].verity = digest("ls-verity")
        allows[2].verity = digest("space-verity")
        let header = PolicyHeader(serial: 8, issued: fixedTime, keyID: keys.publicKey.keyID)
        try PolicyWriter.write(path: dir.file("v2.txt"), header: header, allows: allows, denies: denies, signingKey: keys.privateKey)
        let text = String(decoding: try dir.read("v2.txt"), as: UTF8.self)
        #expect(text.hasPrefix("appctl-policy 2\n"))
        #expect(text.contains(" /usr/bin/ls fsverity-sha256:\(digest("ls-verity").hex)\n"))
        #expect(text.contains(" /srv/app/run%20me.sh fsverity-sha256:\(digest("space-verity").hex)\n"))
        var read: [AllowEntry] = []
        let result = try PolicyReader(path: dir.file("v2.txt")).read(onAllow: { read.append($0.entry()) })
        #expect(result.header.version == 2)
        #expect(read == allows.sorted(by: AllowEntry.canonicallyOrdered))
        // The verity digest stands for the content digest it is paired with; the blocklist still applies.
        let loaded = try LoadedPolicy.load(path: dir.file("v2.txt"), key: keys.publicKey, now: fixedTime)
        #expect(loaded.verity.count == 2)
        #expect(loaded.verity.contentDigest(forVerity: digest("ls-verity")) == digest("ls"))
        #expect(loaded.verity.contentDigest(forVerity: digest("ls")) == nil)
        // Re-signing (as `policy sign` streams it) keeps the version; a version-1 stream cannot take the field.
        let out = try FileDescriptor.open(dir.file("stream.txt"), [.writeOnly, .create, .truncate])
        defer { out.close() }
        let writer = PolicyWriter(output: out, name: "stream.txt")
        try writer.writeHeader(PolicyHeader(issued: fixedTime, allowCount: 1))
        let error = #expect(throws: PolicyError.self) { try writer.writeAllow(allows[0]) }
        #expect(error?.description.contains("format version 1 cannot hold") == true)
        _ = v1
    }

    @Test func interpreterFieldsNeedVersion3AndRoundTrip() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let keys = try TestKeys(in: dir)
        var (allows, denies) = sampleEntries()
        allows[0].interpreter = .python
        allows[1].verity = digest("v")
        allows[1].interpreter = .perl
        let header = PolicyHeader(serial: 9, issued: fixedTime, keyID: keys.publicKey.keyID)
        try PolicyWriter.write(path: dir.file("v3.txt"), header: header, allows: allows, denies: denies, signingKey: keys.privateKey)
        let text = String(decoding: try dir.read("v3.txt"), as: UTF8.self)
        #expect(text.hasPrefix("appctl-policy 3\n"))
        #expect(text.contains(" fsverity-sha256:\(digest("v").hex) interpreter:perl\n"))
        var read: [AllowEntry] = []
        let result = try PolicyReader(path: dir.file("v3.txt")).read(onAllow: { read.append($0.entry()) })
        #expect(result.header.version == 3)
        #expect(read == allows.sorted(by: AllowEntry.canonicallyOrdered))
        let loaded = try LoadedPolicy.load(path: dir.file("v3.txt"), key: keys.publicKey, now: fixedTime)
        #expect(Set(loaded.interpreters.map(\.kind)) == [.python, .perl])
        #expect(loaded.interpreters.contains { $0.digest == allows[0].digest && $0.path == PathEscaping.unescapedString(allows[0].escapedPath) })
    }

    @Test func conflictingVerityPairsAreIgnored() {
        // A verity digest paired with two contents (a broken or hostile signer): such files get hashed instead.
        var pairs = [("v1", "a"), ("v2", "b"), ("v1", "c"), ("v3", "d"), ("v3", "d")]
            .map { VerityPair(verity: digest($0.0), content: digest($0.1)) }
        let index = VerityIndex(sortingInPlace: &pairs)
        #expect(index.contentDigest(forVerity: digest("v1")) == nil)
        #expect(index.contentDigest(forVerity: digest("v2")) == digest("b"))
        #expect(index.contentDigest(forVerity: digest("v3")) == digest("d"))
        #expect(index.count == 2)
    }

    @Test func duplicateEntriesAreRejected() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let h2 = "appctl-policy 1\nissued 2026-01-01T00:00:00Z\nallow-count 2\ndeny-count 0\n"
        let a = "allow \(String(repeating: "ab", count: 32)) 10 elf-exec local /bin/x\n"
        let b = "allow \(String(repeating: "cd", count: 32)) 10 elf-exec local /bin/x\n"
        try dir.write("conflict.txt", h2 + a + b)
        let conflict = #expect(throws: PolicyError.self) { try PolicyReader(path: dir.file("conflict.txt")).read() }
        #expect(conflict?.code == .conflictingDuplicate)
        #expect(conflict?.line == 6)
        #expect(conflict?.message.contains("line 5") == true)
        try dir.write("dup.txt", h2 + a + a)
        #expect(throws: PolicyError.self) { try PolicyReader(path: dir.file("dup.txt")).read() }
        try dir.write("order.txt", h2 + a.replacingOccurrences(of: "/bin/x", with: "/bin/z") + a)
        let order = #expect(throws: PolicyError.self) { try PolicyReader(path: dir.file("order.txt")).read() }
        #expect(order?.code == .outOfOrder)
    }

    @Test func gigabyteGarbageFailsFastWithFlatMemory() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        // 1 GiB: a valid first line, then one endless line. A reader that slurped it would need 1 GiB.
        let path = dir.file("huge.txt")
        let fd = try FileDescriptor.open(path, [.writeOnly, .create, .truncate])
        try fd.writeAll(Array("appctl-policy 1\nissued 2026-01-01T00:00:00Z\n".utf8) + [UInt8](repeating: 0x41, count: 4 << 20))
        _ = ftruncate(fd.rawValue, 1 << 30)
        fd.close()
        let before = peakRSS()
        let error = #expect(throws: PolicyError.self) { try PolicyReader(path: path).read() }
        #expect(error?.code == .lineTooLong)
        #expect(peakRSS() - before < 64 << 20)
        // The same with pure garbage from the first byte.
        let g = try FileDescriptor.open(dir.file("garbage.bin"), [.writeOnly, .create, .truncate])
        _ = ftruncate(g.rawValue, 1 << 30)
        g.close()
        let garbage = #expect(throws: PolicyError.self) { try PolicyReader(path: dir.file("garbage.bin")).read() }
        #expect(garbage?.code == .lineTooLong || garbage?.code == .notAPolicy)
    }

    @Test func writerRefusesConflictingDuplicates() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let a = AllowEntry(digest: digest("a"), size: 1, kind: .script, origin: .local, path: Array("/x".utf8))
        var b = a
        b.digest = digest("b")
        #expect(throws: PolicyError.self) {
            try PolicyWriter.write(path: dir.file("p.txt"), header: PolicyHeader(issued: fixedTime), allows: [a, b], denies: [], signingKey: nil)
        }
        #expect((try? linkStatus(dir.file("p.txt"))) == nil, "nothing may be left behind")
    }
}

@Suite struct KeyTests {
    @Test func keyIDIsFirst16HexOfSHA256OfRawKey() throws {
        let pair = try Ed25519PrivateKey.generatePEM()
        #expect(pair.publicKey.keyID == String(SHA256Digest.of(pair.publicKey.raw).hex.prefix(16)))
        let reread = try Ed25519PublicKey(pem: pair.publicPEM)
        #expect(reread == pair.publicKey)
        let priv = try Ed25519PrivateKey(pem: pair.privatePEM)
        let sig = try priv.signature(for: [1, 2, 3])
        #expect(reread.isValidSignature(sig, for: [1, 2, 3]))
        #expect(!reread.isValidSignature(sig, for: [1, 2, 4]))
    }

    @Test func keysOfTheWrongTypeAreRefused() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let ec = try run("/usr/bin/openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", dir.file("ec.key")])
        #expect(ec.status == 0)
        _ = try run("/usr/bin/openssl", ["pkey", "-in", dir.file("ec.key"), "-pubout", "-out", dir.file("ec.pub")])
        let privError = #expect(throws: KeyError.self) { try Ed25519PrivateKey(pem: try dir.read("ec.key")) }
        #expect(privError?.code == .wrongType)
        let pubError = #expect(throws: KeyError.self) { try Ed25519PublicKey(pem: try dir.read("ec.pub")) }
        #expect(pubError?.code == .wrongType)
        let junk = #expect(throws: KeyError.self) { try Ed25519PublicKey(pem: Array("hello".utf8)) }
        #expect(junk?.code == .notAKey)
    }
}

@Suite struct TimestampTests {
    @Test func canonicalRoundTrip() {
        for s: Int64 in [0, 951_782_400, 1_790_000_000, 4_102_444_799, 253_402_300_799] {
            let t = Timestamp(secondsSinceEpoch: s)
            #expect(Timestamp(canonical: Array(t.description.utf8)) == t)
        }
        #expect(Timestamp(secondsSinceEpoch: 951_782_400).description == "2000-02-29T00:00:00Z")
    }

    @Test func userInputForms() {
        #expect(Timestamp(userInput: "2027-01-31")?.description == "2027-01-31T00:00:00Z")
        #expect(Timestamp(userInput: "2027-01-31T12:00:00Z")?.description == "2027-01-31T12:00:00Z")
        #expect(Timestamp(userInput: "2027-01-31T12:00:00+02:00")?.description == "2027-01-31T10:00:00Z")
        #expect(Timestamp(userInput: "2027-02-29") == nil)
        #expect(Timestamp(userInput: "tomorrow") == nil)
    }
}

@Suite struct DecisionTests {
    @Test func blocklistWinsInEveryMode() {
        for mode in Mode.allCases {
            #expect(Decision.decide(.blocklisted, mode: mode) == Decision(allow: false, reason: .blocklisted))
            #expect(Decision.decide(.known, mode: mode) == Decision(allow: true, reason: .known))
        }
    }

    @Test func unknownDependsOnMode() {
        #expect(Decision.decide(.unknown, mode: .enforce) == Decision(allow: false, reason: .unknown))
        #expect(Decision.decide(.unknown, mode: .monitor) == Decision(allow: true, reason: .unknown, wouldDeny: true))
        #expect(Decision.decide(.unknown, mode: .learn) == Decision(allow: true, reason: .unknown, record: true))
        #expect(Decision.decide(nil, mode: .monitor).wouldDeny)
        #expect(!Decision.unreadable(mode: .enforce).allow)
    }

    @Test func digestSetMembership() {
        let digests = (0..<1000).map { digest("d\($0)") }
        let set = DigestSet(digests + digests.prefix(10))
        #expect(set.count == 1000)
        #expect(digests.allSatisfy { set.contains($0) })
        #expect(!set.contains(digest("absent")))
    }
}
