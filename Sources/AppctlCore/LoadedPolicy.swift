import AppctlKernel

/// A sorted set of digests answering membership by binary search over a flat array:
/// 32 bytes per entry and no per-entry allocation, so 1M entries cost 32 MB.
public struct DigestSet: Sendable {
    public private(set) var sorted: [SHA256Digest]

    /// Sorts and removes repeats (the same content learned at several paths).
    /// Takes the caller's array (left empty) so that sorting 1M entries needs no second copy.
    public init(sortingInPlace d: inout [SHA256Digest]) {
        d.sort()
        var unique = 0
        for i in d.indices where i == 0 || d[i] != d[unique - 1] {
            d[unique] = d[i]
            unique += 1
        }
        d.removeLast(d.count - unique)
        sorted = d
        d = []
    }

    public init(_ digests: [SHA256Digest]) {
        var d = digests
        self.init(sortingInPlace: &d)
    }

    public var count: Int { sorted.count }

    /// A large set and a few small ones (a base and its supplements): the small ones are sorted together, then merged
    /// with the large one in one linear pass — composing 1M + 10×1k entries costs a merge, not a sort of 1M.
    public static func union(_ large: DigestSet, _ small: [DigestSet]) -> DigestSet {
        var rest = small.flatMap(\.sorted)
        guard !rest.isEmpty else { return large }
        rest = DigestSet(sortingInPlace: &rest).sorted
        var merged: [SHA256Digest] = []
        merged.reserveCapacity(large.count + rest.count)
        var i = 0, j = 0
        let a = large.sorted
        while i < a.count || j < rest.count {
            let next: SHA256Digest
            if j == rest.count || (i < a.count && a[i] < rest[j]) { next = a[i]; i += 1 }
            else if i == a.count || rest[j] < a[i] { next = rest[j]; j += 1 }
            else { next = a[i]; i += 1; j += 1 }
            merged.append(next)
        }
        var result = DigestSet([])
        result.sorted = merged
        return result
    }

    public func contains(_ digest: SHA256Digest) -> Bool {
        sorted.withUnsafeBufferPointer { binarySearch($0, for: digest, by: { $0 }) } != nil
    }
}

/// One allow entry's fs-verity digest and the content digest it stands for.
public struct VerityPair: Sendable, Equatable {
    public var verity: SHA256Digest
    public var content: SHA256Digest
    public init(verity: SHA256Digest, content: SHA256Digest) { self.verity = verity; self.content = content }
}

/// fs-verity digest → content digest, for the allow entries that carry one: a file with fs-verity is
/// decided from `FS_IOC_MEASURE_VERITY` without reading it. 64 bytes per such entry, sorted in place (no
/// second copy at load), binary search.
public struct VerityIndex: Sendable {
    private var pairs: [VerityPair] = []

    public init() {}

    /// Takes the caller's array (left empty). A verity digest listed with two different content digests
    /// (which only a broken or hostile signer could produce) is dropped: such files are hashed, as without
    /// fs-verity.
    public init(sortingInPlace p: inout [VerityPair]) {
        p.sort { $0.verity < $1.verity || ($0.verity == $1.verity && $0.content < $1.content) }
        var kept = 0
        var i = 0
        while i < p.count {
            var j = i + 1
            var conflicting = false
            while j < p.count && p[j].verity == p[i].verity {
                if p[j].content != p[i].content { conflicting = true }
                j += 1
            }
            if !conflicting { p[kept] = p[i]; kept += 1 }
            i = j
        }
        p.removeLast(p.count - kept)
        pairs = p
        p = []
    }

    public var count: Int { pairs.count }

    /// Every pair of each index (composing policy layers); a verity digest the layers pair with different content is
    /// dropped, as within one policy.
    public static func union(_ indexes: [VerityIndex]) -> VerityIndex {
        var all = indexes.flatMap(\.pairs)
        return VerityIndex(sortingInPlace: &all)
    }

    /// The content digest the policy pairs with this fs-verity digest, if any.
    public func contentDigest(forVerity digest: SHA256Digest) -> SHA256Digest? {
        pairs.withUnsafeBufferPointer { buf in binarySearch(buf, for: digest, by: \.verity).map { buf[$0].content } }
    }
}

/// A compact over-approximation of the sizes of the allowed files: 2^21 bits (256 KiB) indexed by a hash
/// of the size. `mayContain` is never false for an allowed size, so a false answer proves that no allow
/// entry can match and the file need not be hashed.
public struct SizeFilter: Sendable {
    static let bits = 1 << 21
    private var words = [UInt64](repeating: 0, count: SizeFilter.bits / 64)

    public init() {}

    @inline(__always) static func index(_ size: UInt64) -> Int {
        Int(truncatingIfNeeded: (size &* 0x9E37_79B9_7F4A_7C15) >> 43)   // top 21 bits of a multiplicative hash
    }

    public mutating func insert(_ size: UInt64) {
        let i = Self.index(size)
        words[i >> 6] |= 1 << UInt64(i & 63)
    }

    /// Every size either filter may contain (composing policy layers).
    public mutating func formUnion(_ other: SizeFilter) {
        for i in words.indices { words[i] |= other.words[i] }
    }

    public func mayContain(_ size: UInt64) -> Bool {
        let i = Self.index(size)
        return words[i >> 6] & (1 << UInt64(i & 63)) != 0
    }
}

/// The digests a policy allows only through supplements whose delegations limit kinds, each with the kinds its
/// supplements allow it as (`FileKind.bit`s). A delegation's `kinds=` is checked against the file itself when it is
/// decided: the kind an entry declares is the signer's word, and the signer is what the limit is about.
public struct KindLimits: Sendable {
    public struct Limit: Sendable { public var digest: SHA256Digest; public var kinds: UInt8 }
    private var limits: [Limit] = []
    public init() {}
    public init(sortingInPlace l: inout [Limit]) {
        l.sort { $0.digest < $1.digest }
        var merged: [Limit] = []
        for limit in l {
            if let last = merged.last, last.digest == limit.digest { merged[merged.count - 1].kinds |= limit.kinds } else { merged.append(limit) }
        }
        limits = merged
        l = []
    }
    public var count: Int { limits.count }
    /// The kinds `digest` may be, or nil when it is not limited.
    public func kinds(of digest: SHA256Digest) -> UInt8? {
        limits.withUnsafeBufferPointer { buf in binarySearch(buf, for: digest, by: \.digest).map { buf[$0].kinds } }
    }
}

/// An allow entry that is an interpreter (format version 3): its content, its language, and where it was learned.
public struct DeclaredInterpreter: Sendable, Equatable {
    public var digest: SHA256Digest
    public var kind: InterpreterKind
    public var path: String
    public init(digest: SHA256Digest, kind: InterpreterKind, path: String) { self.digest = digest; self.kind = kind; self.path = path }
}

/// A policy that was read completely, verified, and is ready to answer decisions.
public struct LoadedPolicy: Sendable {
    public var header: PolicyHeader
    public var allowed: DigestSet
    public var denied: DigestSet
    public var path: String
    /// False only for an unsigned inventory loaded for inspection.
    public var isSigned: Bool
    /// Sizes of the allowed files; nil means unknown (any size may match).
    public var allowedSizes: SizeFilter?
    /// fs-verity digests of the allow entries that have one.
    public var verity = VerityIndex()
    /// The allow entries learn recognised as interpreters (format version 3): every host treats these programs as
    /// interpreters, by content and at their path.
    public var interpreters: [DeclaredInterpreter] = []
    /// The layers this policy was composed of (base first), each as its header and file; empty for a single file.
    public var layers: [PolicyLayer] = []
    /// Of each allow entry's kind, how many the file holds (a supplement's delegation may limit them).
    public var kindCounts: [FileKind: Int] = [:]
    /// Digests allowed only by kind-limited supplements (composed layer sets).
    public var kindLimits = KindLimits()
    /// Supplements in the directory that were left out: for other hosts (`scope`), or expired.
    public var skippedLayers: [String] = []
    /// For each package a profile names (`package:<name>`), the digests of this file's allow entries of origin
    /// `dpkg:<name>` (a composed set keeps the base's alone: a supplement must not widen a profile).
    public var packagePrograms: [String: [SHA256Digest]] = [:]

    public init(header: PolicyHeader, allowed: DigestSet, denied: DigestSet, path: String, isSigned: Bool) {
        self.header = header; self.allowed = allowed; self.denied = denied; self.path = path; self.isSigned = isSigned
    }

    /// Every allow entry of every layer (the header's count is the base's alone).
    public var totalAllowCount: Int { layers.isEmpty ? header.allowCount : layers.reduce(0) { $0 + $1.header.allowCount } }

    /// What the policy says about a digest, before the mode is applied.
    public func lookup(_ digest: SHA256Digest) -> Lookup {
        if denied.contains(digest) { return .blocklisted }
        if allowed.contains(digest) { return .known }
        return .unknown
    }

    /// Reads, verifies the signature against `key`, and checks expiry against `now`.
    /// Nothing of the file is returned unless every check passes.
    /// - Parameter acceptExpired: for a policy this host already applied (its last-known-good copy): expiry refuses
    ///   new policies, it never drops one already in force.
    public static func load(path: String, key: Ed25519PublicKey, now: Timestamp = .now, acceptExpired: Bool = false) throws(PolicyError) -> LoadedPolicy {
        var allows: [SHA256Digest] = []
        var denies: [SHA256Digest] = []
        var sizes = SizeFilter()
        var verityPairs: [VerityPair] = []
        var interpreters: [DeclaredInterpreter] = []
        var kindTally = [0, 0, 0, 0]   // by FileKind.ordinal: a dictionary update per line costs ~20 ms at 1M entries
        var profiledPackages: Set<String> = []
        var packagePrograms: [String: [SHA256Digest]] = [:]
        let dpkgPrefix = Array("dpkg:".utf8)
        let result = try PolicyReader(path: path).read(
            onHeader: { header in
                for rule in header.profiles { if case .package(let name) = rule.program { profiledPackages.insert(name) } }
                // Exact capacity: no doubling on growth, so 1M entries peak at 32 MB, not 64.
                allows.reserveCapacity(min(header.allowCount, 1 << 21))  // an unverified count must not reserve gigabytes
                denies.reserveCapacity(min(header.denyCount, 1 << 21))
            },
            onAllow: { line in
                allows.append(line.digest)
                sizes.insert(line.size)
                kindTally[line.kind.ordinal] += 1
                if let verity = line.verity { verityPairs.append(VerityPair(verity: verity, content: line.digest)) }
                if !profiledPackages.isEmpty, line.originBytes.starts(with: dpkgPrefix) {
                    let name = String(decoding: line.originBytes.dropFirst(dpkgPrefix.count), as: UTF8.self)
                    if profiledPackages.contains(name) { packagePrograms[name, default: []].append(line.digest) }
                }
                if let kind = line.interpreter {
                    interpreters.append(DeclaredInterpreter(digest: line.digest, kind: kind,
                                                            path: PathEscaping.unescapedString(String(decoding: line.pathBytes, as: UTF8.self))))
                }
            },
            onDeny: { entry, _ in denies.append(entry.digest) })
        try verify(result, path: path, key: key, now: now, acceptExpired: acceptExpired)
        var policy = LoadedPolicy(header: result.header, allowed: DigestSet(sortingInPlace: &allows),
                                  denied: DigestSet(sortingInPlace: &denies), path: path, isSigned: true)
        policy.allowedSizes = sizes
        policy.verity = VerityIndex(sortingInPlace: &verityPairs)
        policy.interpreters = interpreters
        policy.packagePrograms = packagePrograms
        for kind in FileKind.allCases where kindTally[kind.ordinal] > 0 { policy.kindCounts[kind] = kindTally[kind.ordinal] }
        return policy
    }

    /// The checks that make a read policy trustworthy: signed, by this key, not expired.
    public static func verify(_ result: PolicyReadResult, path: String, key: Ed25519PublicKey, now: Timestamp,
                              acceptExpired: Bool = false) throws(PolicyError) {
        guard let signature = result.signature else {
            throw PolicyError(.unsigned, file: path, "not signed (an inventory must be signed with 'appctl policy sign' before use)")
        }
        guard let keyID = result.header.keyID, result.header.serial != nil else {
            throw PolicyError(.malformed, file: path, "a signed policy needs serial and key-id header fields")
        }
        guard keyID == key.keyID else {
            throw PolicyError(.wrongKey, file: path, "signed by key \(keyID), but the public key given is \(key.keyID)")
        }
        guard key.isValidSignature(signature, for: signedMessage(contentDigest: result.contentDigest)) else {
            throw PolicyError(.badSignature, file: path, "signature does not verify with key \(key.keyID): the file was changed after signing")
        }
        if !acceptExpired, let expires = result.header.expires, expires <= now {
            throw PolicyError(.expired, file: path, "expired at \(expires) (now \(now)); sign a new policy with a later --expires")
        }
    }
}

/// What a policy says about one digest.
public enum Lookup: String, Sendable {
    /// In the allow list and not blocklisted.
    case known
    /// In neither list.
    case unknown
    /// In the deny list: denied in every mode.
    case blocklisted
}

/// The one binary search of the sorted policy arrays: the index of an element whose key is `target`, or nil.
@inline(__always)
func binarySearch<Element>(_ buffer: UnsafeBufferPointer<Element>, for target: SHA256Digest,
                           by key: (Element) -> SHA256Digest) -> Int? {
    var lo = 0, hi = buffer.count
    while lo < hi {
        let mid = (lo &+ hi) >> 1
        let v = key(buffer[mid])
        if v == target { return mid }
        if v < target { lo = mid + 1 } else { hi = mid }
    }
    return nil
}
