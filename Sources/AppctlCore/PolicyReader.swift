// Over 400 lines for a reason: one streaming parser whose single fixed buffer, line splitter and per-field
// checks must be read together to see that every byte of a signed file is checked exactly once.
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// One allow line as the reader sees it. The byte views are valid only during the callback;
/// `entry()` copies them out. Keeping them as views lets a 1M-entry load allocate nothing per line.
public struct AllowLine {
    public let digest: SHA256Digest
    public let size: UInt64
    public let kind: FileKind
    public let lineNumber: Int
    public let originBytes: UnsafeBufferPointer<UInt8>
    public let pathBytes: UnsafeBufferPointer<UInt8>
    /// The fs-verity digest (format version 2 and later), when the entry has one.
    public let verity: SHA256Digest?
    /// The language the program interprets (format version 3), when learn found it to be an interpreter.
    public let interpreter: InterpreterKind?

    public func entry() -> AllowEntry {
        AllowEntry(digest: digest, size: size, kind: kind,
                   origin: Origin(String(decoding: originBytes, as: UTF8.self))!,
                   escapedPath: String(decoding: pathBytes, as: UTF8.self), verity: verity, interpreter: interpreter)
    }
}

/// What a complete read found.
public struct PolicyReadResult: Sendable {
    public var header: PolicyHeader
    /// Nil for an unsigned inventory.
    public var signature: [UInt8]?
    /// SHA-256 over every byte before the signature line (the whole file when unsigned).
    public var contentDigest: SHA256Digest
}

/// Reads a policy or inventory in one streaming pass with a fixed 1 MiB buffer: memory does not
/// grow with the file (a 1 GB garbage file costs one buffer and fails on its first line).
/// Refuses anything that is not in canonical form, so that every accepted file has exactly one
/// spelling and the signature covers what a reviewer reads.
///
/// Callbacks see entries before the signature is checked: callers must not act on them unless
/// `read` returns normally and, for policies, `verify` passes.
public struct PolicyReader {
    public static let maximumLineLength = 64 * 1024
    public let path: String

    public init(path: String) { self.path = path }

    public func read(onHeader: (PolicyHeader) -> Void = { _ in },
                     onAllow: (AllowLine) throws(PolicyError) -> Void = { _ in },
                     onDeny: (DenyEntry, Int) throws(PolicyError) -> Void = { _, _ in }) throws(PolicyError) -> PolicyReadResult {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, [.readOnly, .nonBlocking]) } catch {
            throw PolicyError(.io, file: path, "cannot open: \(error)")
        }
        defer { fd.close() }
        do {
            let st = try fd.status()
            guard st.isRegularFile else { throw PolicyError(.io, file: path, "not a regular file") }
        } catch let error as Errno {
            throw PolicyError(.io, file: path, "cannot stat: \(error)")
        } catch let error as PolicyError { throw error } catch { fatalError() }
        return try withoutActuallyEscaping(onHeader) { onHeader throws(PolicyError) in
            try withoutActuallyEscaping(onAllow) { onAllow throws(PolicyError) in
                try withoutActuallyEscaping(onDeny) { onDeny throws(PolicyError) in
                    var parser = Parser(path: path, onHeader: onHeader, onAllow: onAllow, onDeny: onDeny)
                    return try parser.run(fd)
                }
            }
        }
    }
}

private let space = UInt8(ascii: " ")
private let newline = UInt8(ascii: "\n")

private enum Section: Int { case header, allows, denies, signature, done }

private struct Parser {
    let path: String
    let onHeader: (PolicyHeader) -> Void
    let onAllow: (AllowLine) throws(PolicyError) -> Void
    let onDeny: (DenyEntry, Int) throws(PolicyError) -> Void

    var lineNumber = 0
    var version = 1
    var verityEntries = 0
    var interpreterEntries = 0
    var section = Section.header
    var headerStep = 0
    var serial: UInt64?
    var issued: Timestamp?
    var expires: Timestamp?
    var keyID: String?
    var name: String?
    var supplementOf: String?
    var delegations: [Delegation] = []
    var profiles: [ProfileRule] = []
    var shrinkPermitted = false
    var scope: [String] = []
    var escapedDescription: String?
    var aptSources: [AptSourceRule] = []
    var maintenance: MaintenanceRule?
    var aptUnverified: UnverifiedPackages?
    var allowCount: Int?
    var denyCount: Int?
    var allowsSeen = 0
    var deniesSeen = 0
    var previousPath: [UInt8] = []
    var previousDigest: SHA256Digest?
    var previousLine = 0
    var signature: [UInt8]?
    var signatureFound = false
    let digest = DigestContext(withMD5: false)

    init(path: String, onHeader: @escaping (PolicyHeader) -> Void, onAllow: @escaping (AllowLine) throws(PolicyError) -> Void,
         onDeny: @escaping (DenyEntry, Int) throws(PolicyError) -> Void) {
        self.path = path; self.onHeader = onHeader; self.onAllow = onAllow; self.onDeny = onDeny
        previousPath.reserveCapacity(4096)
    }

    func fail(_ code: PolicyError.Code, _ message: String, line: Int? = nil) -> PolicyError {
        PolicyError(code, file: path, line: line ?? lineNumber, message)
    }

    mutating func run(_ fd: FileDescriptor) throws(PolicyError) -> PolicyReadResult {
        let capacity = 1 << 20
        let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: capacity)
        defer { buffer.deallocate() }
        var filled = 0          // bytes valid in buffer
        var totalRead: Int64 = 0
        var atEOF = false
        while !atEOF {
            let n: Int
            do {
                n = try fd.read(into: UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[filled..<capacity])))
            } catch { throw PolicyError(.io, file: path, "cannot read: \(error)") }
            if n == 0 { atEOF = true }
            totalRead += Int64(n)
            filled += n
            var start = 0
            var hashedUpTo = 0
            // Process every complete line in the buffer.
            while start < filled {
                guard let nl = UnsafeBufferPointer(rebasing: buffer[start..<filled]).firstIndex(of: newline) else { break }
                let end = start + nl        // index of '\n' (rebased index is relative)
                lineNumber += 1
                let line = UnsafeBufferPointer(rebasing: buffer[start..<end])
                if !signatureFound && line.starts(with: "signature ".utf8) {
                    // Everything before the signature line is what was signed.
                    digest.update(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: buffer[hashedUpTo..<start])))
                    hashedUpTo = start
                }
                try handle(line)
                start = end + 1
            }
            if !signatureFound {
                digest.update(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: buffer[hashedUpTo..<start])))
            }
            if start == 0 && filled == capacity {
                throw fail(.lineTooLong, "line longer than \(capacity) bytes", line: lineNumber + 1)
            }
            // Keep the partial line for the next read.
            let rest = filled - start
            if rest > 0 && start > 0 {
                UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: buffer.baseAddress! + start, byteCount: rest)
            }
            filled = rest
            if filled > PolicyReader.maximumLineLength {
                throw fail(.lineTooLong, "line longer than \(PolicyReader.maximumLineLength) bytes", line: lineNumber + 1)
            }
        }
        if totalRead == 0 { throw PolicyError(.empty, file: path, "empty file: not a policy") }
        if filled > 0 {
            throw fail(.truncated, "truncated: the last line has no newline", line: lineNumber + 1)
        }
        return try finishRead()
    }

    mutating func finishRead() throws(PolicyError) -> PolicyReadResult {
        switch section {
        case .header:
            throw fail(.truncated, "truncated: the header is incomplete (no allow-count / deny-count)")
        case .allows, .denies:
            if allowsSeen != allowCount! || deniesSeen != denyCount! {
                throw fail(.truncated, "truncated: header announces \(allowCount!) allow and \(denyCount!) deny entries, file has \(allowsSeen) and \(deniesSeen)")
            }
        case .signature, .done:
            break
        }
        if version == 2 && verityEntries == 0 {
            // One spelling per policy: without fs-verity digests it is version 1.
            throw fail(.malformed, "format version 2 but no entry has an fs-verity digest (write it as version 1)", line: 1)
        }
        if version == 3 && interpreterEntries == 0 {
            throw fail(.malformed, "format version 3 but no entry has an interpreter field (write it as version \(verityEntries > 0 ? 2 : 1))", line: 1)
        }
        return PolicyReadResult(header: currentHeader(), signature: signature, contentDigest: digest.finish().sha256)
    }

    /// The header once `deny-count` (its last field) has been read; required fields are present by then.
    func currentHeader() -> PolicyHeader {
        var header = PolicyHeader(serial: serial, issued: issued!, expires: expires, keyID: keyID, scope: scope,
                                  description: nil, allowCount: allowCount!, denyCount: denyCount!)
        header.escapedDescription = escapedDescription
        header.aptSources = aptSources
        header.maintenance = maintenance
        header.aptUnverified = aptUnverified
        header.name = name
        header.supplementOf = supplementOf
        header.delegations = delegations
        header.shrinkPermitted = shrinkPermitted
        header.profiles = profiles
        header.version = version
        return header
    }

    /// The header keys in their only allowed order; `true` marks the required ones.
    static let headerKeys: [(String, Bool)] = [
        ("serial", false), ("issued", true), ("expires", false), ("key-id", false), ("name", false), ("supplement-of", false),
        ("scope", false), ("description", false), ("delegate", false), ("apt-source", false), ("apt-unverified", false), ("maintenance", false),
        ("shrink", false), ("profile", false), ("allow-count", true), ("deny-count", true),
    ]
    /// Header keys that may appear on several lines in a row (in canonical order).
    static let repeatableHeaderKeys: Set<String> = ["apt-source", "delegate", "profile"]
    /// Header keys of format version 5 (layers).
    static let layerHeaderKeys: Set<String> = ["name", "supplement-of", "delegate", "shrink"]

    mutating func handle(_ line: UnsafeBufferPointer<UInt8>) throws(PolicyError) {
        if lineNumber == 1 {
            if line.elementsEqual("appctl-policy 1".utf8) { return }
            if line.elementsEqual("appctl-policy 2".utf8) { version = 2; return }
            if line.elementsEqual("appctl-policy 3".utf8) { version = 3; return }
            if line.elementsEqual("appctl-policy 4".utf8) { version = 4; return }
            if line.elementsEqual("appctl-policy 5".utf8) { version = 5; return }
            if line.elementsEqual("appctl-policy 6".utf8) { version = 6; return }
            if line.starts(with: "appctl-policy ".utf8) {
                throw fail(.unsupportedVersion, "unsupported format version \(text(line.dropFirst(14))) (this appctl reads versions 1 to \(PolicyHeader.newestFormatVersion))")
            }
            throw fail(.notAPolicy, "not an appctl policy (the first line must be 'appctl-policy 1')")
        }
        switch section {
        case .header:
            try handleHeader(line)
        case .allows:
            if allowsSeen < allowCount! {
                try handleAllow(line)
            } else {
                section = .denies
                try handle(line)
            }
        case .denies:
            if deniesSeen < denyCount! {
                try handleDeny(line)
            } else {
                section = .signature
                try handle(line)
            }
        case .signature:
            guard line.starts(with: "signature ".utf8) else {
                if line.starts(with: "allow ".utf8) || line.starts(with: "deny ".utf8) {
                    throw fail(.countMismatch, "more entries than the header's allow-count / deny-count announce")
                }
                throw fail(.malformed, "expected the signature line or the end of the file")
            }
            let hex = line.dropFirst(10)
            guard hex.count == 128, let bytes = Hex.decode(hex) else {
                throw fail(.malformed, "malformed signature line (expected 128 lowercase hex digits)")
            }
            signature = bytes
            signatureFound = true
            section = .done
        case .done:
            throw fail(.malformed, "content after the signature line")
        }
    }

    mutating func handleHeader(_ line: UnsafeBufferPointer<UInt8>) throws(PolicyError) {
        guard let sp = line.firstIndex(of: space) else { throw fail(.malformed, "malformed header line '\(text(line))'") }
        let key = text(line[..<sp])
        let value = UnsafeBufferPointer(rebasing: line[(sp + 1)...])
        guard let step = Self.headerKeys.firstIndex(where: { $0.0 == key }) else {
            if key == "allow" || key == "deny" { throw fail(.malformed, "entry before the header's allow-count and deny-count") }
            throw fail(.malformed, "unknown header field '\(key)'")
        }
        let repeatable = Self.repeatableHeaderKeys.contains(key)
        guard step >= headerStep || (repeatable && step == headerStep - 1) else {
            throw fail(.outOfOrder, "header field '\(key)' out of order or repeated")
        }
        for skipped in min(headerStep, step)..<step where Self.headerKeys[skipped].1 {
            throw fail(.malformed, "header field '\(Self.headerKeys[skipped].0)' is missing")
        }
        headerStep = step + 1
        if (key == "apt-source" || key == "apt-unverified" || key == "maintenance") && version < 4 {
            throw fail(.malformed, "'\(key)' needs format version 4 (this file says \(version))")
        }
        if Self.layerHeaderKeys.contains(key) && version < 5 {
            throw fail(.malformed, "'\(key)' needs format version 5 (this file says \(version))")
        }
        if key == "profile" && version < 6 {
            throw fail(.malformed, "'profile' needs format version 6 (this file says \(version))")
        }
        switch key {
        case "serial":
            guard let v = parseDecimal(value), v > 0, v <= UInt64(Int64.max) else {
                throw fail(.badSerial, "serial must be a positive integer, got '\(text(value))'")
            }
            serial = v
        case "issued", "expires":
            guard let t = Timestamp(canonical: value) else {
                throw fail(.malformed, "\(key) must be a UTC time like 2026-01-31T12:00:00Z, got '\(text(value))'")
            }
            if key == "issued" { issued = t } else { expires = t }
        case "key-id":
            guard value.count == 16, value.allSatisfy({ Hex.value($0) != nil }) else {
                throw fail(.malformed, "key-id must be 16 lowercase hex digits")
            }
            keyID = text(value)
        case "scope":
            let globs = text(value).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard globs.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f } }) else {
                throw fail(.malformed, "scope must be a comma-separated list of hostname globs")
            }
            scope = globs
        case "description":
            guard PathEscaping.unescape(value, token: false) != nil else { throw fail(.malformed, "malformed escape in description") }
            escapedDescription = text(value)
        case "name", "supplement-of":
            guard isValidLayerName(text(value)) else {
                throw fail(.malformed, "\(key) must be 1 to 64 of a-z 0-9 . _ - starting with a letter or digit, got '\(text(value))'")
            }
            if key == "name" { name = text(value) } else {
                guard name != nil else { throw fail(.malformed, "supplement-of needs a name line before it") }
                supplementOf = text(value)
            }
        case "delegate":
            let delegation: Delegation
            do { delegation = try Delegation(spec: text(value), canonical: true) } catch { throw fail(.malformed, "delegate: \(error)") }
            if let last = delegations.last, !(last < delegation) { throw fail(.outOfOrder, "delegate lines out of canonical order or repeated") }
            if delegations.contains(where: { $0.name == delegation.name }) { throw fail(.malformed, "two delegate lines for the supplement '\(delegation.name)'") }
            delegations.append(delegation)
        case "shrink":
            guard text(value) == "permitted" else { throw fail(.malformed, "shrink must be 'permitted', got '\(text(value))'") }
            shrinkPermitted = true
        case "apt-source":
            let rule: AptSourceRule
            do { rule = try AptSourceRule(spec: text(value), canonical: true) } catch { throw fail(.malformed, "apt-source: \(error)") }
            if let last = aptSources.last, !(last < rule) { throw fail(.outOfOrder, "apt-source lines out of canonical order or repeated") }
            aptSources.append(rule)
        case "profile":
            let rule: ProfileRule
            do { rule = try ProfileRule(spec: text(value)) } catch { throw fail(.malformed, "profile: \(error)") }
            if let last = profiles.last {
                if last.sameKey(rule) { throw fail(.malformed, "two profile lines for \(rule.subject) \(rule.program)") }
                if !(last < rule) { throw fail(.outOfOrder, "profile lines out of canonical order (by subject, then program)") }
            }
            profiles.append(rule)
        case "apt-unverified":
            guard let v = UnverifiedPackages(rawValue: text(value)) else {
                throw fail(.malformed, "apt-unverified must be \(UnverifiedPackages.allCases.map(\.rawValue).joined(separator: " or ")), got '\(text(value))'")
            }
            aptUnverified = v
        case "maintenance":
            do { maintenance = try MaintenanceRule(spec: text(value), canonical: true) } catch { throw fail(.malformed, "maintenance: \(error)") }
        case "allow-count", "deny-count":
            if key == "allow-count" && version == 4 && aptSources.isEmpty && maintenance == nil && aptUnverified == nil {
                throw fail(.malformed, "format version 4 but the header has no apt-source, apt-unverified or maintenance line (write it as version 3 or lower)")
            }
            if key == "allow-count" && version == 6 && profiles.isEmpty {
                throw fail(.malformed, "format version 6 but the header has no profile line (write it as version 5 or lower)")
            }
            if key == "allow-count" && version == 5 && name == nil && delegations.isEmpty && !shrinkPermitted {
                throw fail(.malformed, "format version 5 but the header has no name, delegate or shrink line (write it as version 4 or lower)")
            }
            guard let v = parseDecimal(value), v <= 100_000_000 else {
                throw fail(.malformed, "\(key) must be a count, got '\(text(value))'")
            }
            if key == "allow-count" { allowCount = Int(v) } else {
                denyCount = Int(v)
                section = .allows
                onHeader(currentHeader())
            }
        default:
            break
        }
    }

    mutating func handleAllow(_ line: UnsafeBufferPointer<UInt8>) throws(PolicyError) {
        // allow <sha256> <size> <kind> <origin> <path>
        guard line.count > 6 + 64 + 1, line.starts(with: "allow ".utf8) else {
            throw fail(line.starts(with: "deny ".utf8) ? .countMismatch : .malformed,
                       line.starts(with: "deny ".utf8) ? "fewer allow entries than the header's allow-count announces"
                                                       : "malformed allow entry (expected 'allow <sha256> <size> <kind> <origin> <path>')")
        }
        guard let digest = parseDigest(line, at: 6), line[70] == space else {
            throw fail(.malformed, "malformed allow entry: the hash must be 64 lowercase hex digits")
        }
        // size, kind, origin are single tokens; the path is the rest of the line. No allocation per line:
        // a 1M-entry policy must load in well under a second.
        var bounds = (71, 0, 0, 0)   // start of size; ends of size, kind, origin
        var cursor = 71
        for field in 0..<3 {
            while cursor < line.count && line[cursor] != space { cursor += 1 }
            guard cursor < line.count else {
                throw fail(.malformed, "malformed allow entry (expected 'allow <sha256> <size> <kind> <origin> <path>')")
            }
            switch field {
            case 0: bounds.1 = cursor
            case 1: bounds.2 = cursor
            default: bounds.3 = cursor
            }
            cursor += 1
        }
        let sizeBytes = UnsafeBufferPointer(rebasing: line[bounds.0..<bounds.1])
        let kindBytes = UnsafeBufferPointer(rebasing: line[(bounds.1 + 1)..<bounds.2])
        let origin = UnsafeBufferPointer(rebasing: line[(bounds.2 + 1)..<bounds.3])
        var pathBytes = UnsafeBufferPointer(rebasing: line[(bounds.3 + 1)...])
        // Version 2: the path may be followed by the fs-verity digest; version 3: then by the interpreter field.
        var verity: SHA256Digest?
        var interpreter: InterpreterKind?
        if version >= 2, let sp = pathBytes.firstIndex(of: space) {
            var rest = UnsafeBufferPointer(rebasing: pathBytes[(sp + 1)...])   // rebased views index from 0
            pathBytes = UnsafeBufferPointer(rebasing: pathBytes[..<sp])
            let verityPrefix = verityFieldPrefix.utf8, interpreterPrefix = interpreterFieldPrefix.utf8
            let fieldEnd = rest.firstIndex(of: space) ?? rest.count
            if rest.starts(with: verityPrefix) {
                let field = UnsafeBufferPointer(rebasing: rest[..<fieldEnd])
                guard field.count == verityPrefix.count + 64, let v = parseDigest(field, at: verityPrefix.count) else {
                    throw fail(.malformed, "malformed allow entry: '\(verityFieldPrefix)' must be followed by 64 lowercase hex digits, got '\(text(field))'")
                }
                verity = v
                verityEntries += 1
                rest = fieldEnd < rest.count ? UnsafeBufferPointer(rebasing: rest[(fieldEnd + 1)...]) : UnsafeBufferPointer(rebasing: rest[rest.count...])
            }
            if !rest.isEmpty || verity == nil {
                guard version >= 3, rest.starts(with: interpreterPrefix),
                      let kind = InterpreterKind.allCases.first(where: { rest.dropFirst(interpreterPrefix.count).elementsEqual($0.rawValue.utf8) }) else {
                    throw fail(.malformed, "malformed allow entry: after the path only '\(verityFieldPrefix)<64 hex digits>'"
                        + (version >= 3 ? " and then '\(interpreterFieldPrefix)<\(InterpreterKind.allCases.map(\.rawValue).joined(separator: "|"))>'" : "")
                        + " may follow, got '\(text(rest))'")
                }
                interpreter = kind
                interpreterEntries += 1
            }
        }
        guard let size = parseDecimal(sizeBytes) else {
            throw fail(.malformed, "malformed allow entry: size '\(text(sizeBytes))' is not a canonical number")
        }
        guard let kind = FileKind.allCases.first(where: { kindBytes.elementsEqual($0.rawValue.utf8) }) else {
            throw fail(.malformed, "unknown kind '\(text(kindBytes))' (elf-exec, elf-lib, script, other-exec)")
        }
        guard isValidOrigin(origin) else {
            throw fail(.malformed, "unknown origin '\(text(origin))' (dpkg:<package>, local, manual)")
        }
        guard !pathBytes.isEmpty, PathEscaping.isCanonicalToken(pathBytes) else {
            throw fail(.malformed, "malformed path (spaces and other bytes must be %-escaped)")
        }
        if allowsSeen > 0 {
            let order = compareBytes(previousPath, pathBytes)
            if order == 0 {
                throw fail(digest == previousDigest ? .duplicate : .conflictingDuplicate,
                           digest == previousDigest ? "duplicate allow entry for \(text(pathBytes)) (also line \(previousLine))"
                                                    : "conflicting allow entries for \(text(pathBytes)): line \(previousLine) has another hash")
            }
            if order > 0 {
                throw fail(.outOfOrder, "allow entries must be sorted by path; \(text(pathBytes)) comes after line \(previousLine)")
            }
        }
        previousPath.removeAll(keepingCapacity: true)
        previousPath.append(contentsOf: pathBytes)
        previousDigest = digest
        previousLine = lineNumber
        allowsSeen += 1
        try onAllow(AllowLine(digest: digest, size: size, kind: kind, lineNumber: lineNumber,
                              originBytes: origin, pathBytes: pathBytes, verity: verity, interpreter: interpreter))
    }

    mutating func handleDeny(_ line: UnsafeBufferPointer<UInt8>) throws(PolicyError) {
        // deny <sha256> <note>
        guard line.count > 5 + 64 + 1, line.starts(with: "deny ".utf8) else {
            throw fail(.malformed, "malformed deny entry (expected 'deny <sha256> <note or ->')")
        }
        guard let digest = parseDigest(line, at: 5), line[69] == space else {
            throw fail(.malformed, "malformed deny entry: the hash must be 64 lowercase hex digits")
        }
        let note = UnsafeBufferPointer(rebasing: line[70...])
        guard !note.isEmpty, PathEscaping.unescape(note, token: false) != nil else {
            throw fail(.malformed, "malformed deny note (use '-' for none)")
        }
        if deniesSeen > 0, let previousDigest {
            if previousDigest == digest { throw fail(.duplicate, "duplicate deny entry (also line \(previousLine))") }
            if !(previousDigest < digest) { throw fail(.outOfOrder, "deny entries must be sorted by hash") }
        }
        previousDigest = digest
        previousLine = lineNumber
        deniesSeen += 1
        try onDeny(DenyEntry(digest: digest, escapedNote: text(note)), lineNumber)
    }

    func isValidOrigin(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        if b.elementsEqual("local".utf8) || b.elementsEqual("manual".utf8) { return true }
        return b.count > 5 && b.starts(with: "dpkg:".utf8)
            && b.dropFirst(5).allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "%") }
    }
}

/// memcmp order of two byte strings: negative, zero or positive.
private func compareBytes(_ a: [UInt8], _ b: UnsafeBufferPointer<UInt8>) -> Int {
    a.withUnsafeBufferPointer { a in
        let common = min(a.count, b.count)
        if common > 0 {
            let c = memcmp(a.baseAddress!, b.baseAddress!, common)
            if c != 0 { return Int(c) }
        }
        return a.count - b.count
    }
}

private func text(_ bytes: some Collection<UInt8>) -> String {
    let s = String(decoding: bytes.prefix(200), as: UTF8.self)
    return bytes.count > 200 ? s + "…" : s
}

/// A canonical decimal: digits only, no leading zero unless the number is 0, fits in UInt64.
private func parseDecimal(_ b: UnsafeBufferPointer<UInt8>) -> UInt64? {
    guard !b.isEmpty, b.count <= 19 else { return nil }
    if b.count > 1 && b[0] == UInt8(ascii: "0") { return nil }
    var v: UInt64 = 0
    for c in b {
        guard c >= 48, c <= 57 else { return nil }
        v = v * 10 + UInt64(c - 48)
    }
    return v
}

/// Lowercase hex digit → value; 0xff for every other byte.
/// `nonisolated(unsafe)`: written once during lazy global initialisation, read-only afterwards.
nonisolated(unsafe) private let hexNibbles: UnsafePointer<UInt8> = {
    let table = UnsafeMutablePointer<UInt8>.allocate(capacity: 256)
    table.initialize(repeating: 0xff, count: 256)
    for (value, char) in "0123456789abcdef".utf8.enumerated() { table[Int(char)] = UInt8(value) }
    return UnsafePointer(table)
}()

/// 64 lowercase hex digits at `offset` → digest. A table lookup per digit and one validity check at
/// the end: on a 1M-entry load this runs 64M times.
@inline(__always)
private func parseDigest(_ line: UnsafeBufferPointer<UInt8>, at offset: Int) -> SHA256Digest? {
    guard line.count >= offset + 64 else { return nil }
    let p = line.baseAddress! + offset
    let table = hexNibbles
    var seen: UInt8 = 0
    var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0
    for i in 0..<16 {
        let a = table[Int(p[i])], b = table[Int(p[16 + i])], c = table[Int(p[32 + i])], d = table[Int(p[48 + i])]
        seen |= a | b | c | d
        w0 = w0 << 4 | UInt64(a); w1 = w1 << 4 | UInt64(b); w2 = w2 << 4 | UInt64(c); w3 = w3 << 4 | UInt64(d)
    }
    return seen & 0xf0 == 0 ? SHA256Digest(w0: w0, w1: w1, w2: w2, w3: w3) : nil
}
