import AppctlCore
import AppctlKernel

/// The short-lived signed file at the top of a bundle (after TUF's timestamp and snapshot roles, in one file): which
/// policy files make up this release, by digest and size, so that a channel that serves a file of another release,
/// cuts one short or pads it is caught; which serial each roll-out ring gets; and until when this is current, so that
/// a channel that stops updating (or replays yesterday's bundle) is caught by the host's clock.
///
/// ```
/// appctl-timestamp 1
/// version 7                                  ← grows with every publish; hosts refuse a lower one
/// issued 2026-12-06T22:00:00Z
/// expires 2026-12-07T22:00:00Z               ← hosts refuse it from then on ("the channel is frozen")
/// key-id 0123456789abcdef                    ← the timestamp key (not a policy key)
/// file <sha256> <size> <layer> <serial>      ← sorted by layer, then serial; at most two serials per layer
/// ring <name> <from> <to> newest|previous    ← basis points of the fleet, tiling 0 to 10000 in order
/// signature <128 hex>
/// ```
/// Canonical like the policy format: a file is accepted only if rendering what was parsed gives the same bytes.
public struct BundleTimestamp: Sendable, Equatable {
    public struct File: Sendable, Equatable, Hashable {
        public var digest: SHA256Digest
        public var size: UInt64
        public var layer: String
        public var serial: UInt64
        public init(digest: SHA256Digest, size: UInt64, layer: String, serial: UInt64) {
            self.digest = digest; self.size = size; self.layer = layer; self.serial = serial
        }
        /// Where the file lives in a bundle: content-addressed, so a cache can keep it forever.
        public var bundlePath: String { "files/\(digest.hex).policy" }
    }

    public enum Serves: String, Sendable { case newest, previous }

    public struct Ring: Sendable, Equatable {
        public var name: String
        /// Basis points: the ring holds the hosts whose bucket is in `from..<to` (of 0..<10000).
        public var from: Int
        public var to: Int
        public var serves: Serves
        public init(name: String, from: Int, to: Int, serves: Serves) { self.name = name; self.from = from; self.to = to; self.serves = serves }
    }

    public static let fileName = "timestamp"
    public static let maximumSize = 1 << 20
    /// Bounds on what a timestamp may list: a base and a few hundred supplements fit many times over.
    public static let maximumEntries = 2048
    public static let maximumFileSize: UInt64 = 1 << 40

    public var version: UInt64
    public var issued: Timestamp
    public var expires: Timestamp
    public var keyID: String
    public var files: [File]
    public var rings: [Ring]

    public init(version: UInt64, issued: Timestamp, expires: Timestamp, keyID: String, files: [File], rings: [Ring]) {
        self.version = version; self.issued = issued; self.expires = expires; self.keyID = keyID
        self.files = files.sorted { ($0.layer, $0.serial) < ($1.layer, $1.serial) }; self.rings = rings
    }

    /// Everything before the signature line.
    public var signedText: String {
        var text = "appctl-timestamp 1\nversion \(version)\nissued \(issued)\nexpires \(expires)\nkey-id \(keyID)\n"
        for f in files { text += "file \(f.digest.hex) \(f.size) \(f.layer) \(f.serial)\n" }
        for r in rings { text += "ring \(r.name) \(r.from) \(r.to) \(r.serves.rawValue)\n" }
        return text
    }

    static func message(_ signedText: String) -> [UInt8] {
        Array("appctl-timestamp-v1-signature\0".utf8) + SHA256Digest.of(Array(signedText.utf8)).bytes
    }

    public func signed(with key: Ed25519PrivateKey) throws(KeyError) -> [UInt8] {
        let text = signedText
        return Array((text + "signature \(Hex.encode(try key.signature(for: Self.message(text))))\n").utf8)
    }

    /// The files of one layer, oldest serial first.
    public func files(of layer: String) -> [File] { files.filter { $0.layer == layer } }
    public var layers: [String] { Array(Set(files.map(\.layer))).sorted() }

    /// The ring a host of this bucket is in.
    public func ring(forBucket bucket: Int) -> Ring? { rings.first { bucket >= $0.from && bucket < $0.to } }

    /// What a host of `ring` installs: per layer the newest serial, or the previous one where the ring is served the
    /// previous release and the layer has two; and the newer ones it then evaluates as candidates.
    public func selection(for ring: Ring) -> (install: [File], candidates: [File]) {
        var install: [File] = [], candidates: [File] = []
        for layer in layers {
            let versions = files(of: layer)
            if ring.serves == .previous && versions.count == 2 {
                install.append(versions[0]); candidates.append(versions[1])
            } else {
                install.append(versions.last!)
            }
        }
        return (install, candidates)
    }

    /// Parses and verifies: canonical form, the signature by `key`, the structure (files and rings). Freshness and
    /// the version's growth are the caller's (they need the clock and the host's record).
    public static func verified(_ bytes: [UInt8], key: Ed25519PublicKey, source: String) throws(SyncError) -> BundleTimestamp {
        func bad(_ why: String) -> SyncError { SyncError(.badTimestamp, "\(source): \(why)") }
        guard bytes.count <= maximumSize else { throw bad("larger than \(maximumSize) bytes") }
        let text = String(decoding: bytes, as: UTF8.self)
        guard Array(text.utf8) == bytes, text.hasSuffix("\n") else { throw bad("not UTF-8 text ending in a newline") }
        var lines = text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.first == "appctl-timestamp 1" else { throw bad("not an appctl timestamp (the first line must be 'appctl-timestamp 1')") }
        guard let last = lines.popLast(), last.hasPrefix("signature "), let signature = Hex.decode(last.dropFirst(10).utf8), signature.count == 64 else {
            throw bad("no signature line at the end")
        }
        func field(_ index: Int, _ name: String) throws(SyncError) -> String {
            guard index < lines.count, lines[index].hasPrefix(name + " ") else { throw bad("line \(index + 1): expected '\(name) …'") }
            return String(lines[index].dropFirst(name.count + 1))
        }
        guard let version = UInt64(try field(1, "version")), let issued = Timestamp(canonical: Array(try field(2, "issued").utf8)),
              let expires = Timestamp(canonical: Array(try field(3, "expires").utf8)) else { throw bad("malformed version, issued or expires line") }
        let keyID = try field(4, "key-id")
        // Checked for form before it is repeated in a message: until the signature is checked, every byte is the channel's.
        guard keyID.utf8.count == 16, keyID.utf8.allSatisfy({ Hex.value($0) != nil }) else { throw bad("line 5: key-id must be 16 lowercase hex digits") }
        guard keyID == key.keyID else { throw SyncError(.wrongKey, "\(source): signed by timestamp key \(keyID), but the timestamp key given is \(key.keyID)") }
        guard version <= UInt64(Int64.max) else { throw bad("version out of range") }
        var files: [File] = [], rings: [Ring] = []
        for (offset, line) in lines.dropFirst(5).enumerated() {
            let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard files.count + rings.count < maximumEntries else { throw bad("more than \(maximumEntries) file and ring lines") }
            if f.count == 5, f[0] == "file", let digest = SHA256Digest(hex: f[1]), let size = UInt64(f[2]), size <= maximumFileSize, isValidLayerName(f[3]),
               let serial = UInt64(f[4]), serial > 0, serial <= UInt64(Int64.max) {
                files.append(File(digest: digest, size: size, layer: f[3], serial: serial))
            } else if f.count == 5, f[0] == "ring", isValidLayerName(f[1]), let from = Int(f[2]), let to = Int(f[3]), let serves = Serves(rawValue: f[4]) {
                rings.append(Ring(name: f[1], from: from, to: to, serves: serves))
            } else {
                throw bad("line \(offset + 6): expected 'file <sha256> <size> <layer> <serial>' or 'ring <name> <from> <to> newest|previous'")
            }
        }
        let timestamp = BundleTimestamp(version: version, issued: issued, expires: expires, keyID: keyID, files: files, rings: rings)
        guard timestamp.signedText + last + "\n" == text else { throw bad("not in canonical form (sorted files, one spelling per value)") }
        guard key.isValidSignature(signature, for: message(timestamp.signedText)) else {
            throw SyncError(.badSignature, "\(source): the signature does not verify with timestamp key \(key.keyID): the file was changed after signing")
        }
        if let problem = timestamp.structuralProblem { throw bad(problem) }
        return timestamp
    }

    /// What makes a timestamp unusable whatever its signature: no files, a layer with more than two serials or the
    /// same serial twice, rings that do not tile the fleet.
    public var structuralProblem: String? {
        if files.isEmpty { return "lists no policy files" }
        for layer in layers {
            let serials = files(of: layer).map(\.serial)
            if serials.count > 2 { return "layer '\(layer)' has \(serials.count) serials (at most two: the release and the one rolling out)" }
            if Set(serials).count != serials.count { return "layer '\(layer)' lists serial \(serials[0]) twice" }
        }
        var next = 0
        for ring in rings {
            guard ring.from == next, ring.to > ring.from else { return "rings must tile 0 to 10000 in order (ring '\(ring.name)' starts at \(ring.from), expected \(next))" }
            next = ring.to
        }
        if next != 10_000 { return "rings cover 0 to \(next) of 10000" }
        if Set(rings.map(\.name)).count != rings.count { return "two rings with the same name" }
        return nil
    }
}

/// The bucket of a host, 0 to 9999: from its machine id, so it is stable across reboots and needs no coordination.
/// Ring `canary 0 100` then means the same 1 % of the fleet every time.
public func rolloutBucket(machineID: String) -> Int {
    let digest = SHA256Digest.of(Array("appctl-rollout\0\(machineID)".utf8)).bytes
    var value: UInt64 = 0
    for byte in digest.prefix(8) { value = value << 8 | UInt64(byte) }
    return Int(value % 10_000)
}

/// Why a sync or a publish refused something. One line; the policies in force stay as they are.
public struct SyncError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case io, fetch, badTimestamp, wrongKey, badSignature, stale, replay, mismatch, refusedPolicy, daemon, usage
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    public var description: String { message }
}
