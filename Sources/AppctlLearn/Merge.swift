import AppctlCore
import AppctlKernel
// Foundation's JSON decoder, from FoundationEssentials: the argument parser links that module into appctl already,
// whereas `import Foundation` would add ICU and CoreFoundation (tens of MB) to the binary every host runs as its daemon.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// Why a merge stopped: one line naming the input and, where there is one, the line in it.
public struct MergeError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var message: String

    public init(file: String, line: Int? = nil, _ message: String) {
        self.file = file; self.line = line; self.message = message
    }

    init(_ error: PolicyError) { self.init(file: error.file, line: error.line, error.message) }

    public var description: String { line.map { "\(file):\($0): \(message)" } ?? "\(file): \(message)" }
}

/// The policy a merge is measured against (`--base`): digests it allows are left out, digests it blocklists are left
/// out and reported. Read without checking a signature: it only ever removes entries from the result.
public struct MergeBase: Sendable {
    public var allowed: Set<SHA256Digest> = []
    /// Blocklisted digest → its note (escaped text, `-` when none).
    public var denied: [SHA256Digest: String] = [:]

    public init(allowed: Set<SHA256Digest> = [], denied: [SHA256Digest: String] = [:]) {
        self.allowed = allowed; self.denied = denied
    }

    public static func read(path: String) throws(MergeError) -> MergeBase {
        var base = MergeBase()
        do {
            _ = try PolicyReader(path: path).read(onAllow: { base.allowed.insert($0.digest) },
                                                  onDeny: { entry, _ in base.denied[entry.digest] = entry.escapedNote })
        } catch { throw MergeError(error) }
        return base
    }
}

/// Turns what many hosts learned (inventories) and were denied (event logs) into one candidate inventory: one entry
/// per digest, with the number of distinct hosts that had it. `appctl policy merge` is a thin shell around this.
///
/// Memory grows with distinct (digest, host) pairs, never with the size of a log: inputs are streamed through one
/// 1 MiB buffer, and a digest repeated in a million events on one host is one host.
public struct FleetMerge {
    /// Every decision the daemon writes (`EventRecord.jsonLine`).
    public static let knownDecisions = ["deny", "would-deny", "learned", "allow"]
    /// What a host refused or would have refused: the programs a policy is missing.
    public static let defaultDecisions: Set<String> = ["would-deny", "deny"]
    /// Longest event line accepted: the daemon's lines are a few KB even for paths full of escapes.
    public static let maximumLineLength = 1 << 20

    public var decisions: Set<String>

    /// What was read, for the summary.
    public private(set) var inputs = 0
    public private(set) var inventories = 0
    public private(set) var inventoryEntries = 0
    /// Deny entries in inputs: a merge collects allows; the blocklist that counts is `--base`'s.
    public private(set) var inputDeniesIgnored = 0
    public private(set) var eventLogs = 0
    public private(set) var eventLines = 0
    /// Events whose decision was selected and that carried a digest.
    public private(set) var eventsTaken = 0
    /// Selected events without a digest (the file could not be read or hashed): nothing to allow.
    public private(set) var eventsWithoutDigest = 0

    /// Host index → name as reports print it.
    private(set) var hostNames: [String] = []
    private var hostIndex: [String: Int32] = [:]
    /// Dense, with an index by digest: a dictionary of the (large) sightings themselves would keep a quarter to a
    /// half of its slots empty, each as large as a sighting.
    private(set) var sightings: [Sighting] = []
    private(set) var digests: [SHA256Digest] = []
    private var slot: [SHA256Digest: Int32] = [:]
    private var rawHostIndex: [String: Int32] = [:]

    public init(decisions: Set<String> = FleetMerge.defaultDecisions) {
        self.decisions = decisions
    }

    /// Distinct hosts that contributed an inventory or an event line.
    public var hostCount: Int { hostNames.count }
    public var digestCount: Int { sightings.count }

    // MARK: Inputs

    /// `HOST=FILE` or `FILE`. The host of a bare file is its name without directory and last extension
    /// (`logs/web-01.jsonl` → `web-01`). A `HOST` never contains `/`, so `./a=b.jsonl` is a file named `a=b.jsonl`.
    public static func parseInput(_ spec: String) -> (host: String, path: String) {
        if let eq = spec.firstIndex(of: "="), eq != spec.startIndex, !spec[..<eq].contains("/") {
            let path = String(spec[spec.index(after: eq)...])
            if !path.isEmpty { return (String(spec[..<eq]), path) }
        }
        return (defaultHost(forPath: spec), spec)
    }

    public static func defaultHost(forPath path: String) -> String {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        // A leading dot is a hidden file's name, not an extension.
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return name }
        return String(name[..<dot])
    }

    /// Reads one input: an inventory (or policy) when its first line starts with `appctl-policy `, else JSON lines.
    /// JSON lines may come from a pipe (`web-01=<(zcat events.jsonl.2.gz)`); inventories must be regular files.
    public mutating func add(path: String, host: String) throws(MergeError) {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, [.readOnly, .noControllingTerminal]) } catch {
            throw MergeError(file: path, "cannot open: \(error)")
        }
        defer { fd.close() }
        let capacity = Self.maximumLineLength
        let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: capacity)
        defer { buffer.deallocate() }
        // Enough of the start to tell the two formats apart (a pipe may deliver it in pieces).
        let magic = Array("appctl-policy ".utf8)
        var filled = 0, atEOF = false
        while filled < magic.count && !atEOF {
            let n = try Self.read(fd, into: buffer, from: filled, path: path)
            atEOF = n == 0
            filled += n
        }
        if filled >= magic.count && buffer.prefix(magic.count).elementsEqual(magic) {
            try addInventory(path: path, host: host)
            return
        }
        inputs += 1
        eventLogs += 1
        try readEventLines(fd, path: path, host: host, buffer: buffer, filled: filled, atEOF: atEOF)
    }

    /// Every allow entry of an inventory or policy (its signature, if any, is not checked: the result is signed
    /// after review, and that signature is the one that counts).
    public mutating func addInventory(path: String, host: String) throws(MergeError) {
        let h = intern(host)
        var denies = 0
        do {
            _ = try PolicyReader(path: path).read(onAllow: { line in addAllow(line.entry(), host: h) },
                                                  onDeny: { _, _ in denies += 1 })
        } catch { throw MergeError(error) }
        inputs += 1
        inventories += 1
        inputDeniesIgnored += denies
    }

    /// One allow entry learned on `host`.
    public mutating func addAllow(_ entry: AllowEntry, host: String) {
        addAllow(entry, host: intern(host))
    }

    /// One selected event with a digest. `size` nil: the event did not know it (the daemon writes -1).
    public mutating func addEvent(digest: SHA256Digest, size: UInt64?, path: String, host: String) {
        eventsTaken += 1
        let h = intern(host)
        sightings[Int(slot(for: digest))].add(host: h, size: size, escapedPath: path.isEmpty ? nil : PathEscaping.escapeToken(path.utf8))
    }

    private mutating func addAllow(_ entry: AllowEntry, host h: Int32) {
        inventoryEntries += 1
        // In place: a copy taken out of the dictionary would copy every host set of a digest on each entry.
        func update(_ s: inout Sighting) {
            s.add(host: h, size: entry.size, escapedPath: entry.escapedPath)
            s.kinds.add(entry.kind.rawValue, h)
            s.origins.add(entry.origin.description, h)
            if let verity = entry.verity { s.verities.add(verity.hex, h) }
            if let interpreter = entry.interpreter { s.interpreters.add(interpreter.rawValue, h) }
        }
        update(&sightings[Int(slot(for: entry.digest))])
    }

    private mutating func slot(for digest: SHA256Digest) -> Int32 {
        if let known = slot[digest] { return known }
        let new = Int32(sightings.count)
        slot[digest] = new
        digests.append(digest)
        sightings.append(Sighting())
        return new
    }

    /// Host names as the report prints them: one token (the `PathEscaping` form) without commas, since a log
    /// shipper's `host` field is anyone's text and the report lists hosts comma-separated.
    private mutating func intern(_ host: String) -> Int32 {
        // Once per line of a shipper's log: escape each name once.
        if let known = rawHostIndex[host] { return known }
        let name = PathEscaping.escapeToken(host.utf8).replacing(",", with: "%2c")
        let h: Int32
        if let known = hostIndex[name] {
            h = known
        } else {
            h = Int32(hostNames.count)
            hostNames.append(name)
            hostIndex[name] = h
        }
        rawHostIndex[host] = h
        return h
    }

    private static func read(_ fd: FileDescriptor, into buffer: UnsafeMutableBufferPointer<UInt8>, from offset: Int,
                             path: String) throws(MergeError) -> Int {
        do { return try fd.read(into: UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[offset...]))) } catch {
            throw MergeError(file: path, "cannot read: \(error)")
        }
    }

    private mutating func readEventLines(_ fd: FileDescriptor, path: String, host: String, buffer: UnsafeMutableBufferPointer<UInt8>,
                                         filled initiallyFilled: Int, atEOF initiallyAtEOF: Bool) throws(MergeError) {
        let decoder = JSONDecoder()
        var filled = initiallyFilled, atEOF = initiallyAtEOF, lineNumber = 0
        // The file's own host counts when a line relies on it (or the log is empty): a shipper's file in which
        // every line names its host is not a host itself.
        var fileHostUsed = false
        var sawLine = false
        while true {
            var start = 0
            while start < filled, let found = memchr(buffer.baseAddress! + start, 0x0a, filled - start) {
                let nl = buffer.baseAddress!.distance(to: found.assumingMemoryBound(to: UInt8.self))
                lineNumber += 1
                if try handleEventLine(UnsafeBufferPointer(rebasing: buffer[start..<nl]), decoder: decoder, path: path, line: lineNumber,
                                       host: host) {
                    fileHostUsed = true
                }
                sawLine = true
                start = nl + 1
            }
            if atEOF {
                // A last line without its newline (a log copied while the daemon wrote it) is still read: if it
                // was cut short it is not valid JSON, and the error names it.
                if start < filled {
                    lineNumber += 1
                    if try handleEventLine(UnsafeBufferPointer(rebasing: buffer[start..<filled]), decoder: decoder, path: path,
                                           line: lineNumber, host: host, lastLine: true) {
                        fileHostUsed = true
                    }
                    sawLine = true
                }
                break
            }
            if start == 0 && filled == buffer.count {
                throw MergeError(file: path, line: lineNumber + 1, "line longer than \(buffer.count) bytes: not an event log")
            }
            if start > 0 {
                UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: buffer.baseAddress! + start, byteCount: filled - start)
                filled -= start
            }
            let n = try Self.read(fd, into: buffer, from: filled, path: path)
            atEOF = n == 0
            filled += n
        }
        if fileHostUsed || !sawLine { _ = intern(host) }
    }

    /// One JSON line; returns whether it relied on the file's host (it named none of its own).
    private mutating func handleEventLine(_ line: UnsafeBufferPointer<UInt8>, decoder: JSONDecoder, path: String, line number: Int,
                                          host fileHost: String, lastLine: Bool = false) throws(MergeError) -> Bool {
        // Blank lines (a trailing empty line, CRLF leftovers) carry nothing.
        guard line.contains(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0d }) else { return false }
        eventLines += 1
        let fields: EventFields
        do { fields = try decoder.decode(EventFields.self, from: Data(line)) } catch {
            throw MergeError(file: path, line: number, Self.describe(error, line: line, first: number == 1, last: lastLine))
        }
        let host = fields.host ?? fileHost
        // Every host whose lines were read counts for the summary, whatever its lines held.
        if fields.host != nil { _ = intern(host) }
        guard let decision = fields.decision, decisions.contains(decision) else { return fields.host == nil }
        let digest: SHA256Digest
        switch fields.sha256 {
        case .absent:
            eventsWithoutDigest += 1
            return fields.host == nil
        case .other:
            throw MergeError(file: path, line: number, "\"sha256\" must be a string of 64 hex digits or null")
        case .string(let text):
            guard let d = SHA256Digest(hex: text.lowercased()) else {
                throw MergeError(file: path, line: number, "\"sha256\" must be 64 hex digits, got '\(PathEscaping.escapeText(text.utf8.prefix(80)))'")
            }
            digest = d
        }
        guard let size = fields.size else {
            throw MergeError(file: path, line: number, "\"size\" must be an integer (the daemon writes -1 when it does not know it)")
        }
        addEvent(digest: digest, size: size >= 0 ? UInt64(size) : nil, path: fields.path ?? "", host: host)
        return fields.host == nil
    }

    /// A decoding error as one line, with the start of the offending line: this decoder does not say where in the
    /// line it stopped.
    private static func describe(_ error: any Error, line: UnsafeBufferPointer<UInt8>, first: Bool, last: Bool) -> String {
        // Compressed files are the usual mistake with rotated logs: say so instead of "not valid JSON".
        if first, [[0x1f, 0x8b], [0xfd, 0x37, 0x7a, 0x58, 0x5a], [0x28, 0xb5, 0x2f, 0xfd]].contains(where: { line.starts(with: $0) }) {
            return "compressed, not JSON lines (give it as HOST=<(zcat FILE); xzcat, zstdcat)"
        }
        let what: String
        switch error {
        case DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty: what = "not a JSON object"
        default: what = "not valid JSON"
        }
        // Escaped: the line is anyone's bytes, and the message must stay one line.
        let excerpt = PathEscaping.escapeText(line.prefix(120)) + (line.count > 120 ? "…" : "")
        return "\(what)\(last ? " (the last line, without a newline: was the log copied while it was written?)" : ""): \(excerpt)"
    }
}

/// The fields of an event line the merge uses; every other key is ignored, so log shippers may add their own.
private struct EventFields: Decodable {
    enum Digest { case absent, string(String), other }
    var decision: String?
    var sha256: Digest
    var size: Int64?
    var path: String?
    /// `host`, else `hostname`: the name a log shipper added. Only a non-empty string counts.
    var host: String?

    enum Key: String, CodingKey { case decision, sha256, size, path, host, hostname }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        decision = try? c.decodeIfPresent(String.self, forKey: .decision)
        if try !c.contains(.sha256) || c.decodeNil(forKey: .sha256) {
            sha256 = .absent
        } else if let text = try? c.decode(String.self, forKey: .sha256) {
            sha256 = .string(text)
        } else {
            sha256 = .other
        }
        size = try? c.decodeIfPresent(Int64.self, forKey: .size)
        path = try? c.decodeIfPresent(String.self, forKey: .path)
        let named = [Key.host, .hostname].lazy.compactMap { key in try? c.decodeIfPresent(String.self, forKey: key) }
        host = named.first { !$0.isEmpty }
    }
}
