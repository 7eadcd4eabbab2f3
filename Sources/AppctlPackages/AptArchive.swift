import AppctlCore
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// apt's chain of trust, checked again by appctl before dpkg runs, from files apt already has:
/// `InRelease` (OpenPGP clearsigned; verified by `gpgv`, and only the text gpgv wrote out as signed is read)
/// → a `Packages` index (its SHA-256, uncompressed, listed in the verified Release text; decompressed by apt's own
/// `apt-helper cat-file`) → a `.deb` (its SHA-256 and size listed in that index).
///
/// Keyrings only supply key material: what a host trusts is the signer's primary key fingerprint, named by the
/// signed policy's `apt-source` lines. A key in some keyring that signs a Release file grants nothing unless the
/// policy names its fingerprint.
public struct AptArchive {
    public var listsDirectory: String
    public var keyrings: [String]
    public var now: Timestamp

    public static let gpgv = "/usr/bin/gpgv"
    public static let aptHelper = "/usr/lib/apt/apt-helper"

    public init(listsDirectory: String, keyrings: [String]? = nil, now: Timestamp = .now) {
        self.listsDirectory = listsDirectory.hasSuffix("/") ? String(listsDirectory.dropLast()) : listsDirectory
        self.keyrings = keyrings ?? Self.systemKeyrings()
        self.now = now
    }

    /// Binary keyrings in apt's usual places, owned by root and writable by nobody else; Debian's keyring of
    /// removed keys is left out. (`.asc` files need dearmoring, which gpgv does not do; Debian ships `.gpg` twins
    /// in /usr/share/keyrings.)
    public static func systemKeyrings() -> [String] {
        var found: [String] = []
        for dir in ["/usr/share/keyrings", "/etc/apt/keyrings", "/etc/apt/trusted.gpg.d"] {
            for name in ((try? listDirectory(dir)) ?? []).sorted() where name.hasSuffix(".gpg") && !name.contains("removed-keys") {
                found.append(dir + "/" + name)
            }
        }
        found.append("/etc/apt/trusted.gpg")
        return found.filter { path in
            guard let st = try? linkStatus(path) else { return false }
            return st.isRegularFile && st.st_uid == 0 && st.st_mode & 0o022 == 0 && st.st_size > 0
        }
    }

    // MARK: Release files

    /// A Release file whose signature gpgv accepted, read from the text gpgv wrote out as signed.
    public struct VerifiedRelease: Sendable {
        public var path: String
        /// Primary key fingerprints of the keys whose signatures were good (GOODSIG and VALIDSIG, a strong hash).
        public var signers: Set<String>
        public var origin: String?
        public var suite: String?
        public var codename: String?
        public var validUntil: Timestamp?
        /// Index path relative to the Release file's directory (`main/binary-amd64/Packages`) → SHA-256 and size.
        public var sha256: [String: (digest: SHA256Digest, size: UInt64)]
    }

    /// Verifies one InRelease file. Fails on a bad signature, no good signature, an expired `Valid-Until`, or a
    /// Release text without SHA-256 sums.
    public func verifyRelease(_ path: String) throws(ChainFailure) -> VerifiedRelease {
        guard !keyrings.isEmpty else { throw ChainFailure(path, "no keyring to check its signature with") }
        var arguments = [Self.gpgv, "--status-fd", "2", "--output", "-"]
        for keyring in keyrings { arguments += ["--keyring", keyring] }
        arguments.append(path)
        let child: ChildProcess
        do { child = try ChildProcess(arguments) } catch { throw ChainFailure(path, "cannot run \(Self.gpgv): \(error)") }
        let signedText: [UInt8]
        do { signedText = try child.readOutput(limit: 16 << 20) } catch { throw ChainFailure(path, "cannot read gpgv's output: \(error)") }
        _ = try? child.wait()   // gpgv exits 2 when one of several signatures has no key here; the status lines decide
        let signers = try Self.goodSigners(statusLines: child.errorText, path: path)
        guard !signers.isEmpty else { throw ChainFailure(path, "no good signature by any key in \(keyrings.count) keyrings (\(child.failureReason))") }
        guard let paragraph = Deb822.paragraphs(signedText).first else { throw ChainFailure(path, "the signed text is empty") }
        var release = VerifiedRelease(path: path, signers: signers, origin: paragraph["Origin"], suite: paragraph["Suite"],
                                      codename: paragraph["Codename"], validUntil: nil, sha256: [:])
        if let text = paragraph["Valid-Until"] {
            guard let until = parseRFC2822Date(text) else { throw ChainFailure(path, "unreadable Valid-Until '\(text)'") }
            guard until > now else { throw ChainFailure(path, "expired: Valid-Until \(text) has passed (run apt-get update)") }
            release.validUntil = until
        }
        for line in (paragraph["SHA256"] ?? "").split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count == 3, let digest = SHA256Digest(hex: String(f[0])), let size = UInt64(f[1]) else { continue }
            release.sha256[String(f[2])] = (digest, size)
        }
        guard !release.sha256.isEmpty else { throw ChainFailure(path, "the signed Release text lists no SHA256 sums") }
        return release
    }

    /// The primary fingerprints of good signatures in gpgv's `--status-fd` output (doc/DETAILS in GnuPG):
    /// each signature starts with NEWSIG; it counts only with GOODSIG and VALIDSIG, and a hash algorithm other
    /// than MD5 (1), SHA-1 (2) or RIPEMD-160 (3). Any BADSIG fails the file (someone changed it).
    static func goodSigners(statusLines: String, path: String) throws(ChainFailure) -> Set<String> {
        var signers = Set<String>()
        var goodKeyID: String?, valid: (signingKey: String, primary: String)?
        func close() {
            // GOODSIG names the signing key by its id (the fingerprint's last 16 hex digits); VALIDSIG must be about
            // that same key, or the two lines do not describe one signature.
            if let goodKeyID, let valid, valid.signingKey.hasSuffix(goodKeyID) { signers.insert(valid.primary) }
            goodKeyID = nil; valid = nil
        }
        for line in statusLines.split(separator: "\n") where line.hasPrefix("[GNUPG:] ") {
            let f = line.dropFirst(9).split(separator: " ").map(String.init)
            switch f.first {
            case "NEWSIG": close()
            case "GOODSIG" where f.count > 1: goodKeyID = f[1].uppercased()
            case "BADSIG": throw ChainFailure(path, "BAD signature (by key \(f.count > 1 ? f[1] : "?")): the file was changed after it was signed")
            // A packet gpgv could not process, or no signed data at all: the file is not what a Release file is.
            case "ERROR": throw ChainFailure(path, "gpgv could not process it (\(f.dropFirst().joined(separator: " ")))")
            case "NODATA": throw ChainFailure(path, "no OpenPGP signed data in it")
            case "VALIDSIG":
                guard f.count >= 10, let hashAlgorithm = Int(f[8]), ![1, 2, 3].contains(hashAlgorithm) else { continue }
                valid = (f[1].uppercased(), (f.count >= 11 ? f[10] : f[1]).uppercased())
            default: break
            }
        }
        close()
        return signers
    }

    /// `goodSigners` for the unit tests.
    public static func goodSignersForTesting(_ status: String) throws(ChainFailure) -> Set<String> { try goodSigners(statusLines: status, path: "test") }

    /// Every InRelease file in the lists directory.
    public func releaseFiles() -> [String] {
        (((try? listDirectory(listsDirectory)) ?? []).filter { $0.hasSuffix("_InRelease") }).sorted().map { listsDirectory + "/" + $0 }
    }

    // MARK: Packages indexes

    /// One package's entry in a verified index.
    public struct IndexRecord: Sendable {
        public var package: String
        public var version: String
        public var architecture: String
        public var sha256: SHA256Digest
        public var size: UInt64
        public var release: VerifiedRelease
    }

    public struct PackageKey: Hashable, Sendable {
        public var name: String, version: String
        public init(name: String, version: String) { self.name = name; self.version = version }
    }

    /// What the lists say about the wanted package versions: every record found in an index whose hash matched
    /// its verified Release file, and the reasons indexes or Release files could not be used.
    public struct Lookup: Sendable {
        public var records: [PackageKey: [IndexRecord]] = [:]
        public var problems: [String] = []
    }

    /// Scans every index of every verifiable Release file for the wanted package versions. An index is used
    /// only if its whole uncompressed content hashes to what its verified Release file lists.
    public func lookUp(_ wanted: Set<PackageKey>) -> Lookup {
        var lookup = Lookup()
        let names = ((try? listDirectory(listsDirectory)) ?? []).sorted()
        for releasePath in releaseFiles() {
            let release: VerifiedRelease
            do { release = try verifyRelease(releasePath) } catch {
                lookup.problems.append(error.description)
                continue
            }
            let prefix = String(releasePath.split(separator: "/").last!.dropLast("InRelease".count))
            for name in names where name.hasPrefix(prefix) && name.contains("_binary-") && name.dropFirst(prefix.count).contains("Packages") {
                var metaKey = String(name.dropFirst(prefix.count)).replacingAll("_", with: "/")
                for ext in [".lz4", ".zst", ".xz", ".gz", ".bz2", ".lzma"] where metaKey.hasSuffix(ext) { metaKey.removeLast(ext.count) }
                let indexPath = listsDirectory + "/" + name
                guard let expected = release.sha256[metaKey] else {
                    lookup.problems.append("\(indexPath): not listed in the verified \(releasePath)")
                    continue
                }
                do {
                    for record in try scanIndex(indexPath, expected: expected, release: release, wanted: wanted) {
                        lookup.records[PackageKey(name: record.package, version: record.version), default: []].append(record)
                    }
                } catch {
                    lookup.problems.append(error.description)
                }
            }
        }
        return lookup
    }

    /// Streams one index (decompressed by apt-helper when compressed), hashing every byte, and keeps the
    /// records of wanted packages; they are returned only if the hash and size match the verified Release file.
    func scanIndex(_ path: String, expected: (digest: SHA256Digest, size: UInt64), release: VerifiedRelease,
                   wanted: Set<PackageKey>) throws(ChainFailure) -> [IndexRecord] {
        let compressed = !path.hasSuffix("Packages")
        var child: ChildProcess?
        let input: FileDescriptor
        do {
            if compressed {
                child = try ChildProcess([Self.aptHelper, "cat-file", path])
                input = child!.output
            } else {
                input = try FileDescriptor.open(path, [.readOnly, .nonBlocking])
            }
        } catch { throw ChainFailure(path, "cannot read: \(error)") }
        defer { if child == nil { input.close() } }
        var scanner = IndexScanner(wanted: wanted)
        let digest = DigestContext(withMD5: false)
        var total: UInt64 = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n: Int
            do { n = try input.read(into: buffer) } catch { throw ChainFailure(path, "cannot read: \(error)") }
            if n == 0 { break }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
            digest.update(chunk)
            total += UInt64(n)
            scanner.feed(chunk.bindMemory(to: UInt8.self))
        }
        scanner.finish()
        if let child {
            let status = (try? child.wait()) ?? -1
            guard status == 0 else { throw ChainFailure(path, "cannot decompress: \(child.failureReason)") }
        }
        let actual = digest.finish().sha256
        guard actual == expected.digest, total == expected.size else {
            throw ChainFailure(path, "index hash mismatch: SHA-256 \(actual) (\(total) bytes), the signed Release file says \(expected.digest) (\(expected.size) bytes)")
        }
        return scanner.found.map { IndexRecord(package: $0.package, version: $0.version, architecture: $0.architecture,
                                               sha256: $0.sha256, size: $0.size, release: release) }
    }

    // MARK: .deb files

    /// `<package>_<version>_<arch>.deb`, as apt's cache names them (an epoch's `:` written `%3a`).
    public static func parseDebFileName(_ path: String) -> (key: PackageKey, architecture: String)? {
        let name = String(path.split(separator: "/").last ?? "")
        let parts = name.dropLast(4).split(separator: "_").map(String.init)
        guard name.hasSuffix(".deb"), parts.count == 3 else { return nil }
        return (PackageKey(name: parts[0], version: parts[1].split(separator: "%3a", omittingEmptySubsequences: false).joined(separator: ":")), parts[2])
    }

    /// A `.deb` whose digest and size an index from a verified Release file lists for that package version.
    /// `file` is the descriptor it was hashed through, kept open: its members are read from that same file (never
    /// from the path again, which could name another file by then), and only root can change its content.
    public struct VerifiedDeb: Sendable {
        public var path: String
        public var file: FileDescriptor
        public var digest: SHA256Digest
        /// Every index record that lists this digest for the package version (one per Release file that has it).
        public var records: [IndexRecord]
        public var record: IndexRecord { records[0] }

        public func close() { file.close() }
    }

    /// Hashes a `.deb` and finds the index records that vouch for it. The file must be a regular file only root
    /// can write (apt's cache is; a user's `~/x.deb` is not: its owner could change it after the hash).
    public static func verifyDeb(path: String, package: String, version: String, in lookup: Lookup) throws(ChainFailure) -> VerifiedDeb {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, [.readOnly, .nonBlocking, .noFollow]) } catch { throw ChainFailure(path, "cannot open: \(error)") }
        var keep = false
        defer { if !keep { fd.close() } }
        let digest: SHA256Digest, size: Int64
        do {
            let st = try fd.status()
            guard st.isRegularFile else { throw ChainFailure(path, "not a regular file") }
            guard st.st_uid == 0, st.st_mode & 0o022 == 0 else {
                throw ChainFailure(path, "uid \(st.st_uid) or others could change it after it is checked (only a file only root can write is verified; copy it somewhere root-only)")
            }
            size = Int64(st.st_size)
            digest = try FileHasher().hash(fd).sha256
        } catch let error as ChainFailure { throw error } catch { throw ChainFailure(path, "cannot read: \(error)") }
        let candidates = lookup.records[PackageKey(name: package, version: version)] ?? []
        guard !candidates.isEmpty else {
            throw ChainFailure(path, "\(package) \(version) is in no index of a verified Release file" + (lookup.problems.isEmpty ? "" : " (\(lookup.problems.count) lists unusable: \(lookup.problems[0]))"))
        }
        let matching = candidates.filter { $0.sha256 == digest && $0.size == UInt64(size) }
        guard !matching.isEmpty else {
            throw ChainFailure(path, "SHA-256 \(digest) is not the digest the archive's index lists for \(package) \(version) (\(candidates[0].sha256)): the file was changed or comes from elsewhere")
        }
        keep = true
        return VerifiedDeb(path: path, file: fd, digest: digest, records: matching)
    }
}

/// A link of the chain that does not hold, naming the file.
public struct ChainFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ file: String, _ why: String) { description = "\(file): \(why)" }
}

/// The streaming reader of a Packages index: paragraphs separated by blank lines; only `Package`, `Version`,
/// `Architecture`, `SHA256` and `Size` are looked at, and only paragraphs of wanted package versions are kept.
struct IndexScanner {
    struct Found { var package = "", version = "", architecture = "", sha256 = SHA256Digest(w0: 0, w1: 0, w2: 0, w3: 0), size: UInt64 = 0, hasDigest = false }
    let wanted: Set<AptArchive.PackageKey>
    let wantedNames: Set<String>
    var found: [Found] = []
    private var current = Found()
    private var partial: [UInt8] = []

    init(wanted: Set<AptArchive.PackageKey>) { self.wanted = wanted; wantedNames = Set(wanted.map(\.name)) }

    mutating func feed(_ bytes: UnsafeBufferPointer<UInt8>) {
        var start = 0
        while start < bytes.count {
            guard let nl = UnsafeBufferPointer(rebasing: bytes[start...]).firstIndex(of: UInt8(ascii: "\n")) else {
                partial.append(contentsOf: bytes[start...])
                return
            }
            let end = start + nl
            if partial.isEmpty {
                line(UnsafeBufferPointer(rebasing: bytes[start..<end]))
            } else {
                partial.append(contentsOf: bytes[start..<end])
                partial.withUnsafeBufferPointer { line($0) }
                partial.removeAll(keepingCapacity: true)
            }
            start = end + 1
        }
    }

    mutating func finish() {
        if !partial.isEmpty { let rest = partial; partial = []; rest.withUnsafeBufferPointer { line($0) } }
        endParagraph()
    }

    private mutating func endParagraph() {
        if current.hasDigest && wanted.contains(AptArchive.PackageKey(name: current.package, version: current.version)) { found.append(current) }
        current = Found()
    }

    private mutating func line(_ l: UnsafeBufferPointer<UInt8>) {
        if l.isEmpty { endParagraph(); return }
        let first = l[0]
        // Only a handful of field names matter; everything else is skipped on its first byte.
        guard first == UInt8(ascii: "P") || first == UInt8(ascii: "V") || first == UInt8(ascii: "A") || first == UInt8(ascii: "S") else { return }
        func value(after prefix: String) -> String? {
            guard l.starts(with: prefix.utf8) else { return nil }
            return String(decoding: l[prefix.utf8.count...], as: UTF8.self).trimmingCharacters(" \t")
        }
        if let v = value(after: "Package:") { current.package = v }
        else if !current.package.isEmpty && !wantedNames.contains(current.package) { return }
        else if let v = value(after: "Version:") { current.version = v }
        else if let v = value(after: "Architecture:") { current.architecture = v }
        else if let v = value(after: "SHA256:"), let d = SHA256Digest(hex: v) { current.sha256 = d; current.hasDigest = true }
        else if let v = value(after: "Size:"), let n = UInt64(v) { current.size = n }
    }
}

/// `Sat, 12 Dec 2026 03:33:28 UTC` (the Date and Valid-Until fields of Release files, RFC 2822 in UTC) → a timestamp.
public func parseRFC2822Date(_ text: String) -> Timestamp? {
    let parts = text.split(separator: " ")
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    guard parts.count == 6, ["UTC", "GMT", "+0000", "Z"].contains(parts[5]), let day = Int(parts[1]), (1...31).contains(day),
          let month = months.firstIndex(of: String(parts[2])), let year = Int(parts[3]), (1970...9999).contains(year),
          parts[4].count == 8 else { return nil }
    func two(_ n: Int) -> String { n < 10 ? "0\(n)" : String(n) }
    return Timestamp(canonical: Array("\(year)-\(two(month + 1))-\(two(day))T\(parts[4])Z".utf8))
}

extension String {
    func replacingAll(_ target: Character, with replacement: Character) -> String { String(map { $0 == target ? replacement : $0 }) }
}
