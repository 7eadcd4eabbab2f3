import AppctlKernel

/// What kind of executable content an entry holds; found by content, never by file name.
public enum FileKind: String, CaseIterable, Sendable, Comparable {
    /// An ELF executable (ET_EXEC, or ET_DYN with a program interpreter: PIE).
    case elfExec = "elf-exec"
    /// An ELF shared object without a program interpreter (libraries, the loader itself).
    case elfLib = "elf-lib"
    /// A file starting with `#!`.
    case script = "script"
    /// Anything else with an execute bit.
    case otherExec = "other-exec"

    public static func < (a: FileKind, b: FileKind) -> Bool { a.rawValue < b.rawValue }

    /// One bit per kind, for sets of kinds kept in a byte.
    public var bit: UInt8 { 1 << UInt8(ordinal) }

    /// 0 to 3, for tallies kept in a small array.
    public var ordinal: Int {
        switch self {
        case .elfExec: 0
        case .elfLib: 1
        case .script: 2
        case .otherExec: 3
        }
    }
}

/// Where an allow entry came from.
public enum Origin: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Installed by a Debian package and verified against its recorded MD5.
    case dpkg(package: String)
    /// Found on the host, owned by no package.
    case local
    /// Added by an admin by hand.
    case manual

    public init?(_ text: String) {
        switch text {
        case "local": self = .local
        case "manual": self = .manual
        default:
            guard text.hasPrefix("dpkg:") else { return nil }
            let name = String(text.dropFirst(5))
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "%") }) else { return nil }
            self = .dpkg(package: name)
        }
    }

    public var description: String {
        switch self {
        case .dpkg(let package): return "dpkg:\(package)"
        case .local: return "local"
        case .manual: return "manual"
        }
    }

    /// `dpkg`, `local` or `manual`: what summaries count by.
    public var category: String {
        switch self {
        case .dpkg: return "dpkg"
        case .local: return "local"
        case .manual: return "manual"
        }
    }
}

/// One allowed file: trust is by content (the digest); the path is where it was learned.
public struct AllowEntry: Hashable, Sendable {
    public var digest: SHA256Digest
    public var size: UInt64
    public var kind: FileKind
    public var origin: Origin
    /// The path in its escaped, canonical form (see `PathEscaping`); ASCII only.
    public var escapedPath: String
    /// The file's fs-verity digest (SHA-256 algorithm) when it was learned with fs-verity enabled: a host
    /// then decides by `FS_IOC_MEASURE_VERITY` instead of reading the file. Needs format version 2.
    public var verity: SHA256Digest?
    /// The language this program interprets, detected by `learn` from what it is (format version 3): every host
    /// then treats it as an interpreter, wherever it is installed.
    public var interpreter: InterpreterKind?

    public init(digest: SHA256Digest, size: UInt64, kind: FileKind, origin: Origin, escapedPath: String, verity: SHA256Digest? = nil,
                interpreter: InterpreterKind? = nil) {
        self.digest = digest; self.size = size; self.kind = kind; self.origin = origin; self.escapedPath = escapedPath
        self.verity = verity; self.interpreter = interpreter
    }

    public init(digest: SHA256Digest, size: UInt64, kind: FileKind, origin: Origin, path: [UInt8], verity: SHA256Digest? = nil,
                interpreter: InterpreterKind? = nil) {
        self.init(digest: digest, size: size, kind: kind, origin: origin, escapedPath: PathEscaping.escapeToken(path), verity: verity,
                  interpreter: interpreter)
    }

    /// Canonical order: by escaped path bytes, then digest.
    public static func canonicallyOrdered(_ a: AllowEntry, _ b: AllowEntry) -> Bool {
        let pa = a.escapedPath.utf8, pb = b.escapedPath.utf8
        if !pa.elementsEqual(pb) { return pa.lexicographicallyPrecedes(pb) }
        return a.digest < b.digest
    }
}

/// One blocklisted digest. Deny entries win over allow entries in every mode.
public struct DenyEntry: Hashable, Sendable {
    public var digest: SHA256Digest
    /// A free-text note (escaped form), `-` when there is none.
    public var escapedNote: String

    public init(digest: SHA256Digest, note: String?) {
        self.digest = digest
        if let note, !note.isEmpty { escapedNote = PathEscaping.escapeText(Array(note.utf8)) } else { escapedNote = "-" }
    }

    init(digest: SHA256Digest, escapedNote: String) {
        self.digest = digest; self.escapedNote = escapedNote
    }
}

/// The header of a policy or inventory.
public struct PolicyHeader: Hashable, Sendable {
    /// Version 1; version 2 adds the optional fs-verity field to allow entries. Writers use 1 whenever
    /// no entry has that field, so such policies stay readable by every appctl.
    public static let formatVersion = 1
    public static let newestFormatVersion = 6

    /// Version 5 carries the layer header lines (`name`, `supplement-of`, `delegate`, `shrink`); version 4 the
    /// trust-source lines (`apt-source`, `maintenance`). Each is used exactly when a header has such a line,
    /// whatever the entries need.
    public static func formatVersion(for allows: some Sequence<AllowEntry>, header: PolicyHeader) -> Int {
        !header.profiles.isEmpty ? 6 : header.declaresLayer ? 5 : header.declaresLocalTrust ? 4 : formatVersion(for: allows)
    }

    /// The version a policy with these entries is written in: the lowest that can hold them (one spelling per
    /// policy): 3 with an interpreter field, else 2 with an fs-verity digest, else 1.
    public static func formatVersion(for allows: some Sequence<AllowEntry>) -> Int {
        var version = formatVersion
        for entry in allows {
            if entry.interpreter != nil { return 3 }
            if entry.verity != nil { version = 2 }
        }
        return version
    }
    /// The format version of the file (the first line), 1 or 2.
    public var version = PolicyHeader.formatVersion

    /// Must only grow from one signed policy to the next on a host (anti-rollback). Nil in an unsigned inventory.
    public var serial: UInt64?
    public var issued: Timestamp
    public var expires: Timestamp?
    /// The signing key's id (16 hex digits). Nil in an unsigned inventory.
    public var keyID: String?
    /// The layer's name (format version 5): hosts keep one anti-rollback serial per name. Nil: a single policy file.
    public var name: String?
    /// The base layer this one supplements (format version 5); nil for a base.
    public var supplementOf: String?
    /// Hostname globs this policy is meant for; empty means every host.
    public var scope: [String]
    /// Free text, escaped form.
    public var escapedDescription: String?
    /// The apt sources whose packages this host may verify and trust, gate, or report on (format version 4), in
    /// canonical order. Empty: the host derives nothing from apt.
    public var aptSources: [AptSourceRule] = []
    /// Whether and how this host may open maintenance windows (format version 4). Nil: it may not.
    public var maintenance: MaintenanceRule?
    /// The keys that may sign supplements of this base, and their limits (format version 5), sorted by name.
    public var delegations: [Delegation] = []
    /// The signer says this policy may drop most of the entries of the one before it (format version 5); without
    /// it hosts refuse such a policy (the shrink guard: an emptied file is far likelier a mistake than a decision).
    public var shrinkPermitted = false
    /// What the apt hook does with packages nothing vouches for (format version 4); nil: by mode.
    public var aptUnverified: UnverifiedPackages?
    /// Execution profiles (format version 6): per service or user, the programs it may start, in canonical order.
    public var profiles: [ProfileRule] = []
    public var allowCount: Int
    public var denyCount: Int

    /// Whether the header names any local trust source (so the file is format version 4).
    public var declaresLocalTrust: Bool { !aptSources.isEmpty || maintenance != nil || aptUnverified != nil }
    /// Whether the header has a layer line (so the file is format version 5).
    public var declaresLayer: Bool { name != nil || supplementOf != nil || !delegations.isEmpty || shrinkPermitted }

    public init(serial: UInt64? = nil, issued: Timestamp, expires: Timestamp? = nil, keyID: String? = nil,
                scope: [String] = [], description: String? = nil, allowCount: Int = 0, denyCount: Int = 0) {
        self.serial = serial; self.issued = issued; self.expires = expires; self.keyID = keyID; self.scope = scope
        self.escapedDescription = description.map { PathEscaping.escapeText(Array($0.utf8)) }
        self.allowCount = allowCount; self.denyCount = denyCount
    }

    public var description: String? { escapedDescription.map { PathEscaping.unescapedString($0) } }
}

/// The escaping used for paths and free text, so that every line stays one line and
/// the file has exactly one spelling for every value (the signature covers bytes, not meaning).
public enum PathEscaping {
    /// Paths: every byte outside printable ASCII, space and `%` becomes `%XX` (lowercase hex),
    /// so a path is one whitespace-free token, whatever bytes it holds.
    public static func escapeToken(_ bytes: some Sequence<UInt8>) -> String {
        escape(bytes) { $0 <= 0x20 || $0 >= 0x7f || $0 == UInt8(ascii: "%") }
    }

    /// Free text (descriptions, notes): control bytes and `%` are escaped, spaces and UTF-8 kept.
    public static func escapeText(_ bytes: some Sequence<UInt8>) -> String {
        escape(bytes) { $0 < 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "%") }
    }

    private static func escape(_ bytes: some Sequence<UInt8>, when mustEscape: (UInt8) -> Bool) -> String {
        var out: [UInt8] = []
        for b in bytes {
            if mustEscape(b) {
                out.append(UInt8(ascii: "%")); out.append(contentsOf: Hex.encode([b]).utf8)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The raw bytes an escaped value stands for; nil when an escape is malformed or not canonical.
    public static func unescape(_ escaped: some Collection<UInt8>, token: Bool) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(escaped.count)
        var it = escaped.makeIterator()
        while let b = it.next() {
            if b == UInt8(ascii: "%") {
                guard let h = it.next(), let l = it.next(), let hv = Hex.value(h), let lv = Hex.value(l) else { return nil }
                let v = hv << 4 | lv
                // Only bytes that must be escaped may be: one spelling per value.
                let mustEscape = token ? (v <= 0x20 || v >= 0x7f || v == UInt8(ascii: "%"))
                                       : (v < 0x20 || v == 0x7f || v == UInt8(ascii: "%"))
                guard mustEscape else { return nil }
                out.append(v)
            } else {
                let forbidden = token ? (b <= 0x20 || b >= 0x7f) : (b < 0x20 || b == 0x7f)
                guard !forbidden else { return nil }
                out.append(b)
            }
        }
        return out
    }

    /// Whether a path token is in canonical escaped form; allocation-free twin of `unescape(_:token: true) != nil`.
    public static func isCanonicalToken(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b == UInt8(ascii: "%") {
                guard i + 2 < n, let h = Hex.value(bytes[i + 1]), let l = Hex.value(bytes[i + 2]) else { return false }
                let v = h << 4 | l
                guard v <= 0x20 || v >= 0x7f || v == UInt8(ascii: "%") else { return false }
                i += 3
            } else {
                guard b > 0x20 && b < 0x7f else { return false }
                i += 1
            }
        }
        return true
    }

    public static func unescapedString(_ escaped: String) -> String {
        String(decoding: unescape(escaped.utf8, token: false) ?? Array(escaped.utf8), as: UTF8.self)
    }
}


/// What a host may do with packages from one apt source (format version 4). Named in the signed policy, never
/// in local configuration: which archives a host trusts is the fleet owner's decision.
public enum AptTrustMode: String, Sendable, CaseIterable {
    /// Derive trust: every file of a package verified through the archive's signed chain joins the `overlay:apt`
    /// layer before dpkg unpacks it.
    case auto
    /// Derive nothing: apt is stopped before dpkg runs unless every executable file of the transaction is allowed
    /// already (a signed policy must carry the update first).
    case gate
    /// Derive nothing, stop nothing: the hook only reports. Written by leaving `mode=` out.
    case report
}

/// One `apt-source` header line: the archive's OpenPGP signer, optionally narrowed to a Release file's `Origin`
/// and `Suite` (or `Codename`), and what the host may do with its packages.
/// Canonical spelling: `signer=<40 uppercase hex>[,origin=<token>][,suite=<token>][,mode=auto|gate]`.
public struct AptSourceRule: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The primary key fingerprint of a key that signs the `InRelease` file (what gpgv's VALIDSIG reports last).
    public var signer: String
    public var origin: String?
    public var suite: String?
    public var mode: AptTrustMode

    public init(signer: String, origin: String? = nil, suite: String? = nil, mode: AptTrustMode) {
        self.signer = signer; self.origin = origin; self.suite = suite; self.mode = mode
    }

    /// Parses a spec. `canonical` refuses every other spelling of the same rule (the reader of signed files);
    /// otherwise lowercase hex and any field order are accepted (the command line).
    public init(spec: String, canonical: Bool) throws(SpecError) {
        var signer: String?, origin: String?, suite: String?, mode = AptTrustMode.report, modeWritten = false
        let fields = try specFields(spec), keys = fields.map(\.key)
        for (key, value) in fields {
            switch key {
            case "signer":
                guard value.utf8.count == 40, value.utf8.allSatisfy({ Hex.value($0, allowingUppercase: true) != nil }) else {
                    throw SpecError("signer= must be a 40-hex-digit OpenPGP fingerprint, got '\(value)'")
                }
                if canonical && value != value.uppercased() { throw SpecError("signer= must be uppercase hex") }
                signer = value.uppercased()
            case "origin", "suite":
                guard !value.isEmpty, value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: "%") }) else {
                    throw SpecError("\(key)= must be a word of printable ASCII without ',', '=' or '%', got '\(value)'")
                }
                if key == "origin" { origin = value } else { suite = value }
            case "mode":
                guard let m = AptTrustMode(rawValue: value), m != .report else { throw SpecError("mode= must be auto or gate (leave it out to only report), got '\(value)'") }
                mode = m; modeWritten = true
            default:
                throw SpecError("unknown field '\(key)=' (signer, origin, suite, mode)")
            }
        }
        guard let signer else { throw SpecError("signer= is required") }
        self.init(signer: signer, origin: origin, suite: suite, mode: mode)
        if canonical && (keys != ["signer", "origin", "suite", "mode"].filter(keys.contains) || (modeWritten && mode == .report)) {
            throw SpecError("fields must come in the order signer, origin, suite, mode")
        }
    }

    public var description: String {
        var s = "signer=\(signer)"
        if let origin { s += ",origin=\(origin)" }
        if let suite { s += ",suite=\(suite)" }
        if mode != .report { s += ",mode=\(mode.rawValue)" }
        return s
    }

    /// Whether a verified Release file matches this rule: one of its good signatures is by `signer`, and `Origin`
    /// and `Suite` (or `Codename`) are as named.
    public func matches(signers: Set<String>, origin releaseOrigin: String?, suite releaseSuite: String?, codename: String?) -> Bool {
        guard signers.contains(signer) else { return false }
        if let origin, origin != releaseOrigin { return false }
        if let suite, suite != releaseSuite && suite != codename { return false }
        return true
    }

    public static func < (a: AptSourceRule, b: AptSourceRule) -> Bool { a.description.utf8.lexicographicallyPrecedes(b.description.utf8) }

    /// The rule that governs packages from a verified Release file: of all the rules it matches, the most
    /// restrictive (gate, then report, then auto), whatever order they are written in — a narrower gate rule
    /// is never shadowed by a broader auto rule. Nil when none matches. The hook and the daemon both use this.
    public static func governing(_ rules: [AptSourceRule], signers: Set<String>, origin: String?, suite: String?, codename: String?) -> AptSourceRule? {
        rules.filter { $0.matches(signers: signers, origin: origin, suite: suite, codename: codename) }.min { $0.mode.restriction > $1.mode.restriction }
    }
}

extension AptTrustMode {
    /// gate 2 > report 1 > auto 0.
    public var restriction: Int {
        switch self {
        case .gate: 2
        case .report: 1
        case .auto: 0
        }
    }
}

/// The `apt-unverified` header line (format version 4): what the apt hook does with a package that nothing
/// vouches for (`dpkg -i`-style local files, bad signatures, hash mismatches, expired lists, sources the policy
/// does not name). Absent: `refuse` while the host enforces, `report` otherwise.
public enum UnverifiedPackages: String, Sendable, CaseIterable {
    /// Stop apt before dpkg runs.
    case refuse
    /// Install it and trust nothing of it (its programs are denied in enforce mode).
    case report
    /// Install it only while a maintenance window is open (what the window's processes write is trusted as the
    /// window's, under the policy's maintenance paths: `appctl maintenance start -- apt-get install ./x.deb`);
    /// refuse it otherwise.
    case maintenance
}

/// The `maintenance` header line: whether this host may open maintenance windows, for how long at most, under
/// which directories content written during one may be trusted, and how long that trust lasts unless a signed
/// policy adopts the content. Canonical: `max=<seconds>s[,paths=<dir>:<dir>…][,keep=<seconds>s]`.
public struct MaintenanceRule: Hashable, Sendable, CustomStringConvertible {
    public var maximumSeconds: UInt64
    /// Absolute, normalised directories; empty means no path is trusted (a window only reports).
    public var paths: [String]
    /// How long entries a window added stay allowed after it closed; nil: `defaultKeepSeconds`.
    public var keepSeconds: UInt64?
    public static let defaultKeepSeconds: UInt64 = 7 * 86_400

    public init(maximumSeconds: UInt64, paths: [String], keepSeconds: UInt64? = nil) {
        self.maximumSeconds = maximumSeconds; self.paths = paths; self.keepSeconds = keepSeconds
    }

    /// Whether `path` is at or below one of the rule's directories.
    public func covers(_ path: String) -> Bool {
        paths.contains { $0 == "/" || path == $0 || path.hasPrefix($0 + "/") }
    }

    public init(spec: String, canonical: Bool) throws(SpecError) {
        var maximum: UInt64?, keep: UInt64?, paths: [String] = []
        let fields = try specFields(spec), keys = fields.map(\.key)
        for (key, value) in fields {
            switch key {
            case "max":
                guard let seconds = parseDuration(value), seconds > 0, seconds <= 366 * 86_400 else {
                    throw SpecError("max= must be a duration such as 90m, 2h or 1d (at most 366d), got '\(value)'")
                }
                if canonical && value != "\(seconds)s" { throw SpecError("max= must be written in seconds, as \(seconds)s") }
                maximum = seconds
            case "keep":
                guard let seconds = parseDuration(value), seconds > 0, seconds <= 366 * 86_400 else {
                    throw SpecError("keep= must be a duration such as 12h or 7d (at most 366d), got '\(value)'")
                }
                if canonical && value != "\(seconds)s" { throw SpecError("keep= must be written in seconds, as \(seconds)s") }
                keep = seconds
            case "paths":
                paths = value.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                for path in paths where !isNormalisedAbsolute(path) {
                    throw SpecError("paths= must be absolute, normalised directories without ',' or spaces, got '\(path)'")
                }
            default:
                throw SpecError("unknown field '\(key)=' (max, paths, keep)")
            }
        }
        guard let maximum else { throw SpecError("max= is required") }
        if canonical && keys != ["max", "paths", "keep"].filter(keys.contains) { throw SpecError("fields must come in the order max, paths, keep") }
        self.init(maximumSeconds: maximum, paths: paths, keepSeconds: keep)
    }

    public var description: String {
        "max=\(maximumSeconds)s" + (paths.isEmpty ? "" : ",paths=" + paths.joined(separator: ":")) + (keepSeconds.map { ",keep=\($0)s" } ?? "")
    }
}

/// `key=value,key=value`: the fields of a spec in their order, each key once.
func specFields(_ spec: String) throws(SpecError) -> [(key: String, value: String)] {
    var fields: [(key: String, value: String)] = []
    for field in spec.split(separator: ",", omittingEmptySubsequences: false) {
        guard let eq = field.firstIndex(of: "=") else { throw SpecError("'\(field)' is not key=value") }
        let key = String(field[..<eq]), value = String(field[field.index(after: eq)...])
        guard !fields.contains(where: { $0.key == key }) else { throw SpecError("\(key)= given twice") }
        fields.append((key, value))
    }
    return fields
}

/// Why a spec on the command line or in a header line is refused.
public struct SpecError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// `90`, `90s`, `15m`, `2h`, `1d` → seconds.
public func parseDuration(_ text: String) -> UInt64? {
    guard let last = text.last else { return nil }
    let units: [Character: UInt64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    let (digits, unit) = last.isNumber ? (Substring(text), UInt64(1)) : (text.dropLast(), units[last] ?? 0)
    guard unit > 0, !digits.isEmpty, digits.allSatisfy(\.isASCII), let n = UInt64(digits), digits.first != "0" || digits == "0" else { return nil }
    let (product, overflow) = n.multipliedReportingOverflow(by: unit)
    return overflow ? nil : product
}

/// 7200 → "2h", 5400 → "90m", 45 → "45s": the inverse of `parseDuration`, for messages.
public func formatDuration(_ seconds: UInt64) -> String {
    if seconds % 86_400 == 0 { return "\(seconds / 86_400)d" }
    if seconds % 3600 == 0 { return "\(seconds / 3600)h" }
    if seconds % 60 == 0 { return "\(seconds / 60)m" }
    return "\(seconds)s"
}

/// `/a/b` with no empty, `.` or `..` component, no trailing slash (except `/` itself), printable ASCII only
/// and none of the separators the specs use.
public func isNormalisedAbsolute(_ path: String) -> Bool {
    guard path.hasPrefix("/"), path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: ":") && $0 != UInt8(ascii: "%") }) else { return false }
    if path == "/" { return true }
    return !path.hasSuffix("/") && path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
}


/// A layer name (format version 5): 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit. Also a file name
/// in a policy directory (`<name>.policy`), so nothing that could be a path.
public func isValidLayerName(_ name: String) -> Bool {
    let bytes = Array(name.utf8)
    guard (1...64).contains(bytes.count), let first = bytes.first, isLowerAlnum(first) else { return false }
    return bytes.allSatisfy { isLowerAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
}

private func isLowerAlnum(_ b: UInt8) -> Bool { (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) }

/// One `delegate` header line of a base (format version 5): the key that may sign the supplement called `name`,
/// and the limits of what that supplement may add. The full public key is written, not its 16-digit id: a 64-bit
/// id is what an attacker would have to match to pass as the delegate, and a trust anchor deserves the whole key.
/// Canonical: `name=<name>,key=<64 lowercase hex>[,max-entries=<n>][,kinds=<kind>:<kind>…][,max-valid=<seconds>s]`.
public struct Delegation: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var name: String
    public var publicKey: Ed25519PublicKey
    /// The most allow entries the supplement may carry; nil: no limit.
    public var maximumEntries: Int?
    /// The kinds its entries may have, sorted; empty: any.
    public var kinds: [FileKind]
    /// The longest validity (expires − issued) it may claim; nil: no limit (and no expiry needed).
    public var maximumValiditySeconds: UInt64?

    public init(name: String, publicKey: Ed25519PublicKey, maximumEntries: Int? = nil, kinds: [FileKind] = [], maximumValiditySeconds: UInt64? = nil) {
        self.name = name; self.publicKey = publicKey; self.maximumEntries = maximumEntries
        self.kinds = Array(Set(kinds)).sorted(); self.maximumValiditySeconds = maximumValiditySeconds
    }

    /// Parses a spec. `canonical` refuses every other spelling (the reader of signed files). `resolveKey` turns a
    /// `key=` value that is not 64 hex digits into a key (the command line reads a PEM file there).
    public init(spec: String, canonical: Bool, resolveKey: (String) throws(SpecError) -> Ed25519PublicKey = { value throws(SpecError) in
        throw SpecError("key= must be the delegate's public key as 64 lowercase hex digits, got '\(value)'")
    }) throws(SpecError) {
        var name: String?, key: Ed25519PublicKey?, maximumEntries: Int?, kinds: [FileKind] = [], maximumValidity: UInt64?
        let fields = try specFields(spec), keys = fields.map(\.key)
        for (field, value) in fields {
            switch field {
            case "name":
                guard isValidLayerName(value) else { throw SpecError("name= must be 1 to 64 of a-z 0-9 . _ - (starting with a letter or digit), got '\(value)'") }
                name = value
            case "key":
                if value.utf8.count == 64, let raw = Hex.decode(value.utf8) {
                    key = Ed25519PublicKey(raw: raw)
                } else {
                    if canonical { throw SpecError("key= must be 64 lowercase hex digits") }
                    key = try resolveKey(value)
                }
            case "max-entries":
                guard let n = Int(value), n >= 0, n <= 100_000_000, String(n) == value else { throw SpecError("max-entries= must be a count, got '\(value)'") }
                maximumEntries = n
            case "kinds":
                for word in value.split(separator: ":", omittingEmptySubsequences: false) {
                    guard let kind = FileKind(rawValue: String(word)) else {
                        throw SpecError("kinds= takes kinds separated by ':' (\(FileKind.allCases.map(\.rawValue).joined(separator: ", "))), got '\(word)'")
                    }
                    kinds.append(kind)
                }
                if canonical && kinds != Array(Set(kinds)).sorted() { throw SpecError("kinds= must be sorted and without repeats") }
            case "max-valid":
                guard let seconds = parseDuration(value), seconds > 0 else { throw SpecError("max-valid= must be a duration such as 12h or 30d, got '\(value)'") }
                if canonical && value != "\(seconds)s" { throw SpecError("max-valid= must be written in seconds, as \(seconds)s") }
                maximumValidity = seconds
            default:
                throw SpecError("unknown field '\(field)=' (name, key, max-entries, kinds, max-valid)")
            }
        }
        guard let name else { throw SpecError("name= is required") }
        guard let key else { throw SpecError("key= is required") }
        if canonical && keys != ["name", "key", "max-entries", "kinds", "max-valid"].filter(keys.contains) {
            throw SpecError("fields must come in the order name, key, max-entries, kinds, max-valid")
        }
        self.init(name: name, publicKey: key, maximumEntries: maximumEntries, kinds: kinds, maximumValiditySeconds: maximumValidity)
    }

    public var description: String {
        var s = "name=\(name),key=\(Hex.encode(publicKey.raw))"
        if let maximumEntries { s += ",max-entries=\(maximumEntries)" }
        if !kinds.isEmpty { s += ",kinds=" + kinds.map(\.rawValue).joined(separator: ":") }
        if let maximumValiditySeconds { s += ",max-valid=\(maximumValiditySeconds)s" }
        return s
    }

    public static func < (a: Delegation, b: Delegation) -> Bool { a.description.utf8.lexicographicallyPrecedes(b.description.utf8) }
}
