import AppctlCore
import AppctlKernel

// The grouping half of `FleetMerge`: from what the inputs said about each digest to the entries to write and the
// report's lines, and the compact tallies that keep a large fleet's merge in memory.

extension FleetMerge {
    /// Groups what was read: one allow entry per digest seen on at least `minHosts` hosts, minus what `base` allows
    /// or blocklists and digests whose inputs disagree on the size.
    public func result(base: MergeBase = MergeBase(), minHosts: Int = 1) -> MergeResult {
        var result = MergeResult()
        let names = HostNaming(hostNames)
        var candidates: [MergeResult.Entry] = []
        for (digest, s) in zip(digests, sightings) {
            func note(_ list: WritableKeyPath<MergeResult, [MergeResult.Note]>, _ text: String) {
                result[keyPath: list].append(MergeResult.Note(digest: digest, text: text))
            }
            let hosts = s.hosts.count
            if let blocklistNote = base.denied[digest] {
                note(\.blocklisted, "\(hosts) \(hosts == 1 ? "host" : "hosts")\t\(s.paths.winner ?? "-")\t\(names.text(s.hosts))\tnote: \(blocklistNote)")
                continue
            }
            if base.allowed.contains(digest) { result.alreadyAllowed += 1; continue }
            let sizes = s.sizes.ranked
            if sizes.count > 1 {
                // Content has one size: an input that says otherwise is wrong or lying, and which one is not ours to guess.
                note(\.conflicts, "sizes differ: " + sizes.map { "\($0.value) on \(names.describe($0.hosts))" }.joined(separator: "; "))
                continue
            }
            guard let sizeText = sizes.first?.value, let size = UInt64(sizeText) else {
                // The daemon logs size -1 when it had no file key; an entry needs the exact size (hosts skip hashing
                // files whose size no entry has).
                note(\.withoutSize, "no input gave its size\t\(names.describe(s.hosts))\t\(s.paths.winner ?? "-")")
                continue
            }
            guard hosts >= minHosts else { result.belowMinimum += 1; continue }
            // Events do not know what a file is; inventories do, and when they disagree most hosts win (and the
            // report says so).
            let kind = s.kinds.winner.flatMap(FileKind.init(rawValue:)) ?? .otherExec
            if s.kinds.count > 1 { note(\.notes, "kind differs: \(names.describe(s.kinds)); wrote \(kind.rawValue)") }
            let origin = s.origins.winner.flatMap(Origin.init) ?? .local
            // An interpreter mark makes hosts check the scripts a program runs; old inventories carry none, so only the
            // hosts that name one vote (a disagreement is shown).
            let interpreter = s.interpreters.winner.flatMap(InterpreterKind.init(rawValue:))
            if s.interpreters.count > 1 {
                note(\.notes, "interpreter differs: \(names.describe(s.interpreters)); wrote \(interpreter!.rawValue)")
            }
            // An fs-verity digest is a grant of trust of its own (a host allows a file with it without reading it),
            // so it is never chosen by vote: it is kept only when every host that has the file names the same one;
            // otherwise none is written (hosts hash the file) and the review table says why.
            var verity: SHA256Digest?
            if s.verities.count > 1 {
                note(\.notes, "fs-verity dropped: inventories disagree: \(names.describe(s.verities)); hosts will hash the file")
            } else if let only = s.verities.ranked.first {
                if only.hosts.count < hosts {
                    note(\.notes, "fs-verity \(only.value) dropped: vouched for by only \(only.hosts.count) of \(hosts) hosts (\(names.text(only.hosts))); hosts will hash the file")
                } else {
                    verity = SHA256Digest(hex: only.value)
                }
            }
            let entry = AllowEntry(digest: digest, size: size, kind: kind, origin: origin, escapedPath: s.paths.winner ?? "-",
                                   verity: verity, interpreter: interpreter)
            candidates.append(MergeResult.Entry(allow: entry, hosts: hosts, exampleHosts: names.list(s.hosts)))
        }
        result.kept = Self.uniquePaths(candidates)
        result.kept.sort { a, b in
            if a.hosts != b.hosts { return a.hosts > b.hosts }
            return AllowEntry.canonicallyOrdered(a.allow, b.allow)
        }
        for list in [\MergeResult.conflicts, \.blocklisted, \.withoutSize, \.notes] {
            result[keyPath: list].sort { $0.digest < $1.digest }
        }
        return result
    }

    /// The format refuses one path twice. Paths are informational, so a shared one goes to the digest on most hosts
    /// (then the smallest digest) and the others become `PATH#<12 hex digits of their digest>`.
    static func uniquePaths(_ candidates: [MergeResult.Entry]) -> [MergeResult.Entry] {
        let ranked = candidates.sorted { a, b in
            if a.allow.escapedPath != b.allow.escapedPath { return a.allow.escapedPath.utf8.lexicographicallyPrecedes(b.allow.escapedPath.utf8) }
            if a.hosts != b.hosts { return a.hosts > b.hosts }
            return a.allow.digest < b.allow.digest
        }
        var used = Set<String>()
        var out: [MergeResult.Entry] = []
        var renamed: [MergeResult.Entry] = []
        out.reserveCapacity(ranked.count)
        for entry in ranked {
            if used.insert(entry.allow.escapedPath).inserted { out.append(entry) } else { renamed.append(entry) }
        }
        // After every first claim, so that a suffixed name never takes a path an input really had.
        for var entry in renamed {
            let hex = entry.allow.digest.hex
            var name = entry.allow.escapedPath + "#" + hex.prefix(12)
            if used.contains(name) { name = entry.allow.escapedPath + "#" + hex }
            var n = 2
            let stem = name
            while used.contains(name) { name = stem + "#\(n)"; n += 1 }
            used.insert(name)
            entry.allow.escapedPath = name
            out.append(entry)
        }
        return out
    }
}

/// What a merge produced: the entries to write and what was left out, for the report.
public struct MergeResult: Sendable {
    public struct Entry: Sendable {
        public var allow: AllowEntry
        public var hosts: Int
        /// Up to five, smallest names first.
        public var exampleHosts: [String]
    }

    /// One report line about a digest: tab-separated, paths escaped, host lists comma-separated.
    public struct Note: Sendable {
        public var digest: SHA256Digest
        public var text: String
    }

    /// Most hosts first, then by path.
    public var kept: [Entry] = []
    /// Inputs disagree on the size: left out.
    public var conflicts: [Note] = []
    /// The base policy blocklists them: left out (and a host running one is worth a look).
    public var blocklisted: [Note] = []
    /// Only events with size -1 saw them: left out.
    public var withoutSize: [Note] = []
    /// Kept, but inputs disagreed on a field, or an fs-verity digest rests on fewer hosts than have the file.
    public var notes: [Note] = []
    public var alreadyAllowed = 0
    public var belowMinimum = 0

    public var allows: [AllowEntry] { kept.map(\.allow) }

    /// The review table: one line per kept digest, then `#` lines for what was left out or needs a look.
    public var report: String {
        var text = "# hosts sha256 size kind path example-hosts\n"
        for e in kept {
            text += "\(e.hosts)\t\(e.allow.digest)\t\(e.allow.size)\t\(e.allow.kind.rawValue)\t\(e.allow.escapedPath)\t\(e.exampleHosts.joined(separator: ","))\n"
        }
        for (label, notes) in [("conflict", conflicts), ("blocklisted in base", blocklisted), ("no size", withoutSize), ("note", notes)] {
            for note in notes { text += "# \(label): \(note.digest)\t\(note.text)\n" }
        }
        return text
    }
}

/// Host names in the order reports list them (by bytes), ranked once per result: a common program's host list is
/// its five smallest names out of thousands, picked without sorting them all.
private struct HostNaming {
    let names: [String]
    let rank: [Int32]

    init(_ names: [String]) {
        self.names = names
        var rank = [Int32](repeating: 0, count: names.count)
        let order = names.indices.sorted { names[$0].utf8.lexicographicallyPrecedes(names[$1].utf8) }
        for (position, host) in order.enumerated() { rank[host] = Int32(position) }
        self.rank = rank
    }

    /// Up to five names, smallest first: the same merge prints the same report.
    func list(_ hosts: HostSet) -> [String] {
        var smallest: [(rank: Int32, host: Int32)] = []
        hosts.forEach { host in
            let r = rank[Int(host)]
            guard smallest.count < 5 || r < smallest[4].rank else { return }
            smallest.insert((r, host), at: smallest.firstIndex { $0.rank > r } ?? smallest.count)
            if smallest.count > 5 { smallest.removeLast() }
        }
        return smallest.map { names[Int($0.host)] }
    }

    func text(_ hosts: HostSet) -> String {
        list(hosts).joined(separator: ",") + (hosts.count > 5 ? ",…" : "")
    }

    func describe(_ hosts: HostSet) -> String {
        "\(hosts.count) \(hosts.count == 1 ? "host" : "hosts") (\(text(hosts)))"
    }

    func describe(_ votes: Votes) -> String {
        votes.ranked.map { "\($0.value) on \(describe($0.hosts))" }.joined(separator: "; ")
    }
}

/// Distinct host indices. Most digests are on one host (its own builds, scripts): that one is kept inline. A short
/// array holds a few; a bitmap holds many (a fleet's common programs): 10,000 hosts cost 1.25 KB per set instead of
/// the ~64 KB of a Set<Int32>.
struct HostSet: Sendable {
    /// The only member while `count` is 1.
    private var only: Int32 = 0
    /// Members while there are 2 to `arrayLimit`.
    private var few: [Int32] = []
    /// In use (and `few` empty) once the set outgrew `few`.
    private var bits: [UInt64] = []
    private(set) var count = 0
    private static let arrayLimit = 32

    mutating func insert(_ host: Int32) {
        switch count {
        case 0:
            only = host
            count = 1
        case 1:
            if host != only { few = [only, host]; count = 2 }
        default:
            if bits.isEmpty {
                if few.contains(host) { return }
                if few.count < Self.arrayLimit {
                    few.append(host)
                    count += 1
                    return
                }
                for h in few { setBit(h) }
                few = []
            }
            if setBit(host) { count += 1 }
        }
    }

    @discardableResult
    private mutating func setBit(_ host: Int32) -> Bool {
        let word = Int(host) >> 6, mask = UInt64(1) << UInt64(host & 63)
        if word >= bits.count { bits.append(contentsOf: repeatElement(0, count: word + 1 - bits.count)) }
        defer { bits[word] |= mask }
        return bits[word] & mask == 0
    }

    func forEach(_ body: (Int32) -> Void) {
        if count == 1 { body(only); return }
        if bits.isEmpty { few.forEach(body); return }
        for (w, word) in bits.enumerated() where word != 0 {
            var rest = word
            while rest != 0 {
                body(Int32(w << 6 + rest.trailingZeroBitCount))
                rest &= rest - 1
            }
        }
    }
}

/// Which hosts gave which value of one field of one digest: a value counts once per host however often it repeats.
/// Nearly always every host gives the same value: that one is kept inline, and a dictionary exists only once they
/// differ (memory per digest matters when a fleet has millions).
struct Votes: Sendable {
    private var first: String?
    private var firstHosts = HostSet()
    private var others: [String: HostSet] = [:]

    mutating func add(_ value: String, _ host: Int32) {
        if first == nil { first = value }
        if value == first { firstHosts.insert(host) } else { others[value, default: HostSet()].insert(host) }
    }

    /// How many different values.
    var count: Int { first == nil ? 0 : 1 + others.count }

    /// Most hosts first; ties by the value's bytes, so that the result does not depend on the order of the inputs.
    var ranked: [(value: String, hosts: HostSet)] {
        guard let first else { return [] }
        return ([(value: first, hosts: firstHosts)] + others.map { (value: $0.key, hosts: $0.value) }).sorted { a, b in
            a.hosts.count != b.hosts.count ? a.hosts.count > b.hosts.count : a.value.utf8.lexicographicallyPrecedes(b.value.utf8)
        }
    }

    var winner: String? { others.isEmpty ? first : ranked.first?.value }
}

/// Everything the inputs said about one digest.
struct Sighting: Sendable {
    var hosts = HostSet()
    /// Decimal sizes; more than one is a conflict.
    var sizes = Votes()
    var paths = Votes()
    // From inventories only: an event does not know what the file is.
    var kinds = Votes()
    var origins = Votes()
    var verities = Votes()
    var interpreters = Votes()

    mutating func add(host: Int32, size: UInt64?, escapedPath: String?) {
        hosts.insert(host)
        if let size { sizes.add(String(size), host) }
        if let escapedPath { paths.add(escapedPath, host) }
    }
}
