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
    public static let newestFormatVersion = 3

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
    /// Hostname globs this policy is meant for; empty means every host.
    public var scope: [String]
    /// Free text, escaped form.
    public var escapedDescription: String?
    public var allowCount: Int
    public var denyCount: Int

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

