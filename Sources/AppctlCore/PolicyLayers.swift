import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// One layer of a composed policy, as `status` and the host report show it.
public struct PolicyLayer: Sendable, Equatable {
    public var name: String
    public var header: PolicyHeader
    /// The file it was read from (inside the policy directory, or a last-known-good copy).
    public var path: String
    public var isSupplement: Bool { header.supplementOf != nil }

    public init(name: String, header: PolicyHeader, path: String) {
        self.name = name; self.header = header; self.path = path
    }
}

/// A policy directory: one base and its supplements, each a signed `<name>.policy` file (format version 5).
///
/// The rules (after Windows App Control's base and supplemental policies, and IPE's per-name versions):
/// - the base is signed by the host's key and names, in `delegate` lines, the keys that may sign each supplement,
///   with limits (entries, kinds, validity);
/// - a supplement can only add allow entries: no deny entries (adding one would let its signer deny the fleet's
///   programs; removing one is impossible anyway, as a deny in any layer wins), no trust-source, delegate or
///   shrink lines;
/// - every layer has its own anti-rollback serial, kept per name by the host (`PolicyState`).
/// A set that breaks any rule is refused whole: the host keeps the set in force.
public enum PolicyLayers {
    /// The file suffix of the layers in force, and of candidates evaluated next to them (shadow evaluation).
    public static let enforcedSuffix = ".policy"
    public static let candidateSuffix = ".candidate"

    /// The names of the files with `suffix` in `directory`, sorted; `.`-files (a sync's temporary files) are skipped.
    public static func files(in directory: String, suffix: String) throws(PolicyError) -> [String] {
        do {
            return try listDirectory(directory).filter { $0.hasSuffix(suffix) && !$0.hasPrefix(".") }.sorted()
        } catch {
            throw PolicyError(.io, file: directory, "cannot read the policy directory: \(error)")
        }
    }

    /// Reads, verifies and composes the layers in `directory`: the `.policy` files, or with `candidates` the
    /// `.candidate` files in place of the `.policy` files of the same name (a candidate set is what the host
    /// would enforce if the candidates were installed). `key` verifies the base; the base's `delegate` lines
    /// verify the supplements.
    ///
    /// The directory is opened once and every file is read through that descriptor, so a sync that swaps the
    /// directory for a new one in the middle (`renameat2(RENAME_EXCHANGE)`) cannot hand over half of each set.
    /// `shownAs`: the directory's name in errors and layer paths (a sync's staging directory is named for its source).
    public static func load(directory: String, key: Ed25519PublicKey, now: Timestamp = .now, acceptExpired: Bool = false,
                            candidates: Bool = false, hostname: String? = nil, shownAs: String? = nil) throws(PolicyError) -> LoadedPolicy {
        let dir: FileDescriptor
        do { dir = try FileDescriptor.open(directory, [.readOnly, .directory]) } catch {
            throw PolicyError(.io, file: directory, "cannot open the policy directory: \(error)")
        }
        defer { dir.close() }
        let through = "/proc/self/fd/\(dir.rawValue)"
        var chosen: [String: String] = [:]   // layer name → file name
        for file in try files(in: through, suffix: enforcedSuffix) { chosen[String(file.dropLast(enforcedSuffix.count))] = file }
        if candidates {
            let candidateFiles = try files(in: through, suffix: candidateSuffix)
            guard !candidateFiles.isEmpty else { throw PolicyError(.io, file: directory, "no candidate layers (*\(candidateSuffix))") }
            for file in candidateFiles { chosen[String(file.dropLast(candidateSuffix.count))] = file }
        }
        let paths = chosen.sorted { $0.key < $1.key }.map { (name: $0.key, path: through + "/" + $0.value, shown: (shownAs ?? directory) + "/" + $0.value) }
        return try compose(paths, key: key, now: now, acceptExpired: acceptExpired, hostname: hostname)
    }

    /// How far a supplement's `issued` may lie ahead of this host's clock (its `max-valid` counts from `issued`).
    public static let clockSkewSeconds: Int64 = 300

    /// Verifies and composes layer files: `name` is what the file must call itself (its file name), `path` where to
    /// read it, `shown` what errors name.
    ///
    /// A supplement that breaks a rule refuses the whole set. A supplement for other hosts (`scope`, when `hostname`
    /// is given) or past its expiry is left out instead (`skippedLayers`): a fleet-wide bundle names every team's
    /// supplements, and one that lapsed must lose its entries, not hold the base back. `acceptExpired` is for the
    /// base alone (a set this host applied before); an expired supplement is always left out.
    public static func compose(_ files: [(name: String, path: String, shown: String)], key: Ed25519PublicKey, now: Timestamp = .now,
                               acceptExpired: Bool = false, hostname: String? = nil) throws(PolicyError) -> LoadedPolicy {
        guard !files.isEmpty else { throw PolicyError(.io, file: "policy directory", "no layers (*\(enforcedSuffix) files)") }
        var headers: [(name: String, path: String, shown: String, header: PolicyHeader)] = []
        for file in files {
            guard isValidLayerName(file.name) else {
                throw PolicyError(.malformed, file: file.shown, "'\(file.name)' is not a layer name (1 to 64 of a-z 0-9 . _ -)")
            }
            let header = try readHeader(path: file.path, shown: file.shown)
            guard header.name == file.name else {
                throw PolicyError(.malformed, file: file.shown, header.name.map { "the file is named for layer '\(file.name)' but its header says '\($0)'" }
                                  ?? "not a layer: the header has no name line (sign it with --name \(file.name))")
            }
            headers.append((file.name, file.path, file.shown, header))
        }
        let bases = headers.filter { $0.header.supplementOf == nil }
        guard bases.count == 1, let baseFile = bases.first else {
            throw PolicyError(.malformed, file: files[0].shown.dropLastPathComponent(),
                              bases.isEmpty ? "no base layer: every layer says supplement-of" : "more than one base layer: \(bases.map(\.name).joined(separator: ", "))")
        }
        var base = try reshown(baseFile.shown) { () throws(PolicyError) in try LoadedPolicy.load(path: baseFile.path, key: key, now: now, acceptExpired: acceptExpired) }
        base.path = baseFile.shown
        var layers = [PolicyLayer(name: baseFile.name, header: base.header, path: baseFile.shown)]
        var supplements: [(policy: LoadedPolicy, delegation: Delegation)] = []
        var skipped: [String] = []
        for file in headers where file.header.supplementOf != nil {
            let header = file.header
            guard header.supplementOf == baseFile.name else {
                throw PolicyError(.malformed, file: file.shown, "supplements '\(header.supplementOf!)', but the base here is '\(baseFile.name)'")
            }
            guard let delegation = base.header.delegations.first(where: { $0.name == file.name }) else {
                throw PolicyError(.wrongKey, file: file.shown, "base '\(baseFile.name)' delegates no key for the supplement '\(file.name)' (it names: \(base.header.delegations.map(\.name).joined(separator: ", ").orNone))")
            }
            let supplement: LoadedPolicy
            do { supplement = try LoadedPolicy.load(path: file.path, key: delegation.publicKey, now: now, acceptExpired: true) } catch {
                var error = error
                error.file = file.shown
                if error.code == .wrongKey {
                    error.message = "signed by key \(header.keyID ?? "?"), but base '\(baseFile.name)' delegates '\(file.name)' to key \(delegation.publicKey.keyID)"
                }
                throw error
            }
            try check(supplement.header, kinds: supplement.kindCounts, against: delegation, base: baseFile.name, shown: file.shown, now: now)
            let h = supplement.header
            if let expires = h.expires, expires <= now {
                skipped.append("\(file.name) \(h.serial!) (expired at \(expires))")
                continue
            }
            if let hostname, !h.scope.isEmpty, !h.scope.contains(where: { globMatches($0, hostname) }) {
                skipped.append("\(file.name) \(h.serial!) (for hosts \(h.scope.joined(separator: ",")))")
                continue
            }
            layers.append(PolicyLayer(name: file.name, header: h, path: file.shown))
            supplements.append((supplement, delegation))
        }
        var composed = composeEntries(base: base, supplements: supplements)
        composed.layers = layers
        composed.skippedLayers = skipped
        return composed
    }

    /// What a supplement may be: only allow entries, within its delegation's limits.
    static func check(_ header: PolicyHeader, kinds: [FileKind: Int], against delegation: Delegation, base: String, shown: String,
                      now: Timestamp) throws(PolicyError) {
        func refuse(_ why: String) -> PolicyError { PolicyError(.malformed, file: shown, "supplement '\(delegation.name)' refused: \(why)") }
        if header.denyCount > 0 { throw refuse("it has \(header.denyCount) deny entries; a supplement may only add allow entries (denies belong in base '\(base)')") }
        if !header.delegations.isEmpty { throw refuse("it has delegate lines; only the base delegates") }
        if header.declaresLocalTrust { throw refuse("it names local trust sources (apt-source, apt-unverified, maintenance); only the base may") }
        if header.shrinkPermitted { throw refuse("it says shrink permitted; only the base may") }
        if !header.profiles.isEmpty { throw refuse("it has profile lines; only the base says which service may start what") }
        if header.issued.secondsSinceEpoch > now.secondsSinceEpoch + clockSkewSeconds {
            throw refuse("issued \(header.issued), in the future of this host's clock (\(now)): its validity would start late")
        }
        if let maximum = delegation.maximumEntries, header.allowCount > maximum {
            throw refuse("\(header.allowCount) allow entries, more than the \(maximum) its delegation allows")
        }
        if !delegation.kinds.isEmpty, let kind = kinds.keys.sorted().first(where: { !delegation.kinds.contains($0) }) {
            throw refuse("\(kinds[kind]!) entries of kind \(kind.rawValue), which its delegation does not allow (only \(delegation.kinds.map(\.rawValue).joined(separator: ", ")))")
        }
        if let maximum = delegation.maximumValiditySeconds {
            guard let expires = header.expires else { throw refuse("it never expires, but its delegation allows at most \(formatDuration(maximum)) of validity") }
            let validity = expires.secondsSinceEpoch - header.issued.secondsSinceEpoch
            if validity > Int64(maximum) { throw refuse("valid for \(formatDuration(UInt64(max(0, validity)))), more than the \(formatDuration(maximum)) its delegation allows") }
        }
    }

    /// The base's header, deny list, fs-verity pairs and interpreters; every layer's allow entries and sizes. A
    /// supplement's fs-verity pairs and interpreter fields are not taken: a pair lets a file be decided without being
    /// read (a supplement signer could pair a blocklisted file's verity digest with an allowed digest), and an
    /// interpreter declaration changes how the daemon reads command lines — both are the base signer's to make.
    /// Entries of supplements whose delegation limits kinds are allowed only as those kinds (`KindLimits`), unless
    /// the base or an unlimited supplement allows the same digest.
    static func composeEntries(base: LoadedPolicy, supplements: [(policy: LoadedPolicy, delegation: Delegation)]) -> LoadedPolicy {
        guard !supplements.isEmpty else { return base }
        var composed = base
        composed.allowed = DigestSet.union(base.allowed, supplements.map(\.policy.allowed))
        var sizes = base.allowedSizes ?? SizeFilter()
        for supplement in supplements { if let other = supplement.policy.allowedSizes { sizes.formUnion(other) } }
        composed.allowedSizes = sizes
        for supplement in supplements { composed.kindCounts.merge(supplement.policy.kindCounts, uniquingKeysWith: +) }
        let unlimited = supplements.filter { $0.delegation.kinds.isEmpty }.map(\.policy.allowed)
        var limits: [KindLimits.Limit] = []
        for (policy, delegation) in supplements where !delegation.kinds.isEmpty {
            let mask = delegation.kinds.reduce(UInt8(0)) { $0 | $1.bit }
            for digest in policy.allowed.sorted where !base.allowed.contains(digest) && !unlimited.contains(where: { $0.contains(digest) }) {
                limits.append(KindLimits.Limit(digest: digest, kinds: mask))
            }
        }
        composed.kindLimits = KindLimits(sortingInPlace: &limits)
        return composed
    }

    /// The layers of the `.policy` files in `directory`, by header only (what is installed, without verifying it);
    /// files that are not layers are skipped.
    public static func installedLayers(in directory: String) -> [PolicyLayer] {
        ((try? files(in: directory, suffix: enforcedSuffix)) ?? []).compactMap { name in
            let path = directory + "/" + name
            guard let header = try? readHeader(path: path, shown: path), let layer = header.name else { return nil }
            return PolicyLayer(name: layer, header: header, path: path)
        }
    }

    /// The header alone (the reader stops at the first entry).
    public static func readHeader(path: String, shown: String) throws(PolicyError) -> PolicyHeader {
        var header: PolicyHeader?
        let stop = PolicyError(.io, file: "", "header read")
        do {
            let result = try PolicyReader(path: path).read(onHeader: { header = $0 }, onAllow: { _ throws(PolicyError) in throw stop },
                                                           onDeny: { _, _ throws(PolicyError) in throw stop })
            return result.header
        } catch {
            if let header, error.file.isEmpty { return header }
            var error = error
            error.file = shown
            throw error
        }
    }

    private static func reshown<T>(_ shown: String, _ body: () throws(PolicyError) -> T) throws(PolicyError) -> T {
        do { return try body() } catch {
            var error = error
            error.file = shown
            throw error
        }
    }
}

extension String {
    var orNone: String { isEmpty ? "none" : self }
    /// `/a/b/c` → `/a/b`, `/a` → `/`, `a` → `.`.
    public func dropLastPathComponent() -> String {
        guard let slash = lastIndex(of: "/") else { return "." }
        return slash == startIndex ? "/" : String(self[..<slash])
    }
}

/// What a host remembers of every layer it applied, by name: the highest serial (anti-rollback, per name as IPE
/// and App Control keep it) and that layer's allow count then (the shrink guard's yardstick). One file,
/// `<state-dir>/layer-serials`, lines `<name> <serial> <allow-count>`, rewritten atomically. Names are never
/// forgotten: a supplement removed and later re-added must still not come back older.
public struct LayerRecords: Sendable, Equatable {
    public struct Record: Sendable, Equatable {
        public var serial: UInt64
        public var allowCount: Int
        public init(serial: UInt64, allowCount: Int) { self.serial = serial; self.allowCount = allowCount }
    }
    public var byName: [String: Record] = [:]
    public init() {}

    public static func path(stateDirectory: String) -> String { stateDirectory + "/layer-serials" }

    /// A record that exists but cannot be read or parsed is an error, never "none": that would switch rollback
    /// protection off.
    public static func read(stateDirectory: String) throws(PolicyError) -> LayerRecords {
        let path = path(stateDirectory: stateDirectory)
        let bytes: [UInt8]
        do { bytes = try readSmallFile(path, limit: 1 << 20) } catch {
            if error == .noSuchFile { return LayerRecords() }
            throw PolicyError(.io, file: path, "cannot read the layer serials: \(error) (rollback protection needs them; fix or remove the file)")
        }
        var records = LayerRecords()
        for (number, line) in String(decoding: bytes, as: UTF8.self).split(separator: "\n").enumerated() {
            let fields = line.split(separator: " ")
            guard fields.count == 3, isValidLayerName(String(fields[0])) || fields[0] == baseRole, let serial = UInt64(fields[1]), let count = Int(fields[2]) else {
                throw PolicyError(.malformed, file: path, line: number + 1, "not '<name> <serial> <allow-count>' (rollback protection needs it; fix or remove the file)")
            }
            records.byName[String(fields[0])] = Record(serial: serial, allowCount: count)
        }
        return records
    }

    public func write(stateDirectory: String) throws(Errno) {
        mkdir(stateDirectory, 0o700)
        let text = byName.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.serial) \($0.value.allowCount)\n" }.joined()
        try AtomicFileWriter.write(Array(text.utf8), to: Self.path(stateDirectory: stateDirectory), permissions: 0o600)
    }

    /// The records after applying `layers` (a rollback lowers a serial only when the caller allowed it).
    public func updated(with layers: [PolicyLayer]) -> LayerRecords {
        var next = self
        for layer in layers {
            let record = Record(serial: layer.header.serial!, allowCount: layer.header.allowCount)
            next.byName[layer.name] = record
            if !layer.isSupplement { next.byName[Self.baseRole] = record }
        }
        return next
    }

    /// The smallest share of its previous entries a layer may keep without `shrink permitted`, and the size below
    /// which a layer is too small for the rule to mean anything.
    public static let shrinkKeepsAtLeast = 0.5
    public static let shrinkGuardFloor = 100

    /// The record of whichever layer is the base, whatever its name: a base published under another name (an old
    /// one from before a rename, a test base the same key signed) must not pass for a first release of that name.
    /// Not a valid layer name, so no layer can collide with it.
    public static let baseRole = "@base"

    /// Why this host must not apply `layers`, or nil: a base for another host, a serial lower than the one applied for
    /// the layer's name (and, for the base, for the base role; unless `allowRollback`), or a layer that keeps less than
    /// half of its entries without saying so in its signed header (`shrink permitted`). `inForce` adds the counts of
    /// the layers enforced now. Supplements for other hosts are not refused here: composing leaves them out.
    public func refusal(of layers: [PolicyLayer], hostname: String, allowRollback: Bool, inForce: [PolicyLayer] = []) -> String? {
        for layer in layers {
            let h = layer.header
            let keys = layer.isSupplement ? [layer.name] : [layer.name, Self.baseRole]
            if !layer.isSupplement && !h.scope.isEmpty && !h.scope.contains(where: { globMatches($0, hostname) }) {
                return "\(layer.path): layer '\(layer.name)' is for hosts \(h.scope.joined(separator: ",")), not \(hostname)"
            }
            for key in keys {
                if let last = byName[key], h.serial! < last.serial, !allowRollback {
                    return "\(layer.path): \(key == Self.baseRole ? "base" : "layer") '\(layer.name)' serial \(h.serial!) is lower than \(last.serial), the last applied on this host\(key == Self.baseRole ? " for the base" : "") (rollback refused)"
                }
            }
            let inForceCount = inForce.first { $0.name == layer.name || (!layer.isSupplement && !$0.isSupplement) }?.header.allowCount ?? 0
            let before = keys.reduce(inForceCount) { max($0, byName[$1]?.allowCount ?? 0) }
            if !h.shrinkPermitted, before >= Self.shrinkGuardFloor, Double(h.allowCount) < Double(before) * Self.shrinkKeepsAtLeast {
                return "\(layer.path): layer '\(layer.name)' would drop from \(before) to \(h.allowCount) allow entries (shrink guard: sign it with --allow-shrink if that is meant)"
            }
        }
        return nil
    }
}
