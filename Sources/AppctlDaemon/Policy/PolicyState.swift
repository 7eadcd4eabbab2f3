import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why a policy was not applied. One line; the daemon keeps its last good policy.
public struct PolicyRefusal: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The policy life cycle on one host: verify, refuse rollbacks and out-of-scope policies,
/// remember the highest serial applied (in the state directory), swap atomically.
public final class PolicyState: Sendable {
    private struct Current: Sendable {
        var policy: LoadedPolicy?
        var mode: Mode
        var lastError: String?
        var source: Source = .configured
        /// The local overlays as read from disk, and what of them the policy in force trusts.
        var overlays: [Overlay] = []
        var overlayTable = OverlayTable()
        /// A candidate set evaluated next to the one in force (shadow evaluation): never decides, only counts.
        var candidate: LoadedPolicy?
        var candidateError: String?
        /// Distinct digests the candidate would deny that the policy in force allows (at most `candidateSampleLimit`).
        var candidateWouldDeny: Set<SHA256Digest> = []
        /// The execution profiles of the policy in force, compiled (`ProfileTable`), and whether profiles are learned.
        var profiles = ProfileTable()
        var learnProfilesInMonitorMode = false
    }

    static let candidateSampleLimit = 10_000

    /// Where the policy in force came from.
    public enum Source: Equatable, Sendable {
        /// The configured policy file.
        case configured
        /// The state directory's copy of a policy (or layer set) applied before, because the configured one was refused
        /// at start.
        case lastKnownGood(because: String)

        public var name: String {
            switch self {
            case .configured: "configured"
            case .lastKnownGood: "last-known-good"
            }
        }
    }

    /// How many applied policies are kept as last-known-good copies (the newest serials).
    static let keptCopies = 3

    private let current: Mutex<Current>
    public let stateDirectory: String
    public let hostname: String

    public init(mode: Mode, stateDirectory: String, hostname: String) {
        current = Mutex(Current(policy: nil, mode: mode))
        self.stateDirectory = stateDirectory
        self.hostname = hostname
    }

    /// The policy's verdict on a digest, with the serial and mode it was made under (read together under one lock).
    /// A digest the signed policy does not know may be allowed by an overlay the policy's rules trust; a
    /// blocklisted digest never is.
    /// `waitForWindow`: a hash worker may wait for an open maintenance window's queued notices before it calls a
    /// digest unknown; the event thread never does (the window's thread writes files, whose opens the event
    /// thread answers: waiting there would wait on itself).
    public func decide(_ digest: SHA256Digest, layer: Verdict.Layer = .digest, waitForWindow: Bool = false) -> Verdict {
        let verdict = decideNow(digest, layer: layer)
        if waitForWindow, verdict.decision.reason == .unknown, let beforeUnknown, beforeUnknown() { return decideNow(digest, layer: layer) }
        return verdict
    }

    /// Whether a maintenance window is open (an unknown digest may become known in a moment).
    public var windowIsOpen: Bool { windowOpen?() ?? false }

    private func decideNow(_ digest: SHA256Digest, layer: Verdict.Layer) -> Verdict {
        current.withLock { c in
            var lookup = c.policy?.lookup(digest)
            var allowedBy: String? = lookup == .known ? "base" : nil
            if lookup == .unknown, let overlay = c.overlayTable.layer(of: digest) {
                lookup = .known
                allowedBy = overlay
            }
            var verdict = Verdict(Decision.decide(lookup, mode: c.mode), serial: c.policy?.header.serial, mode: c.mode, layer: layer, allowedBy: allowedBy)
            // Allowed only by supplements whose delegations limit kinds: the responder checks the file is one of them.
            if allowedBy == "base", c.policy!.kindLimits.count > 0, let kinds = c.policy!.kindLimits.kinds(of: digest) { verdict.requiredKinds = kinds }
            // Shadow evaluation: what the candidate set would say of content the set in force allows. The overlays
            // count for both (what a host derived locally does not change with the candidate).
            if lookup == .known, let candidate = c.candidate, case let candidateSays = candidate.lookup(digest),
               candidateSays == .blocklisted || (candidateSays == .unknown && allowedBy == "base") {
                verdict.candidateWouldDeny = true
                if c.candidateWouldDeny.count < Self.candidateSampleLimit { c.candidateWouldDeny.insert(digest) }
            }
            return verdict
        }
    }

    /// Replaces the overlays (read from disk by the caller) and re-derives what the policy in force trusts.
    /// Returns whether any digest allowed before is no longer allowed (then cached verdicts must go).
    /// The table is built outside the lock the event thread decides under (a 100k-entry overlay must not pause
    /// answers); `rebuilding` keeps a policy swap and an overlay swap from crossing.
    @discardableResult
    public func setOverlays(_ overlays: [Overlay]) -> (table: OverlayTable, revoked: Bool) {
        rebuilding.withLock { _ in
            let (policy, before) = current.withLock { ($0.policy, $0.overlayTable) }
            let table = OverlayTable(overlays, header: policy?.header)
            let profiles = policy.map { Self.compileProfiles($0, overlays: overlays) } ?? ProfileTable()
            let revoked = !table.containsEveryDigest(of: before)
            current.withLock { c in
                c.overlays = overlays
                c.overlayTable = table
                c.profiles = profiles
            }
            return (table, revoked)
        }
    }

    private let rebuilding = Mutex<Void>(())

    public var overlayTable: OverlayTable { current.withLock { $0.overlayTable } }

    /// Asked when a digest is unknown while a maintenance window is open: the window's close-write notices still
    /// queued are taken in first (a program written and run at once must not lose that race). Returns whether
    /// anything was added. Set once at start-up.
    /// (`nonisolated(unsafe)`: both are set once at start-up, before any thread that reads them exists.)
    nonisolated(unsafe) public var beforeUnknown: (@Sendable () -> Bool)?
    nonisolated(unsafe) public var windowOpen: (@Sendable () -> Bool)?

    /// A verdict that does not depend on the content (own process, unreadable, size filter, shutdown), stamped
    /// with the serial and mode in force.
    public func verdict(layer: Verdict.Layer, _ decision: (Mode) -> Decision) -> Verdict {
        current.withLock { c in Verdict(decision(c.mode), serial: c.policy?.header.serial, mode: c.mode, layer: layer) }
    }

    public var mode: Mode { current.withLock { $0.mode } }

    /// The profiles in force, and whether execs are being learned per subject (learn mode, or monitor mode with
    /// profile learning switched on), read together.
    public var profileState: (table: ProfileTable, learning: Bool) {
        current.withLock { c in (c.profiles, c.mode == .learn || (c.mode == .monitor && c.learnProfilesInMonitorMode)) }
    }

    /// Switches profile learning in monitor mode on or off (learn mode always learns them).
    public func setProfileLearning(_ on: Bool) { current.withLock { $0.learnProfilesInMonitorMode = on } }

    /// The policy's profile lines compiled for the event path: `package:` names expand to the base's entries of that
    /// package and to the files of the apt overlay's packages of that name the policy trusts; `user=` names resolve
    /// through /etc/passwd.
    static func compileProfiles(_ policy: LoadedPolicy, overlays: [Overlay]) -> ProfileTable {
        let rules = policy.header.profiles
        guard !rules.isEmpty else { return ProfileTable() }
        let uids = passwdUIDs(String(decoding: (try? readSmallFile("/etc/passwd", limit: 16 << 20)) ?? [], as: UTF8.self))
        let sources = policy.header.aptSources
        return ProfileTable(rules: rules, packageDigests: { name in
            var digests = policy.packagePrograms[name] ?? []
            for overlay in overlays where overlay.layer == "apt" {
                for package in overlay.packages where package.name == name && package.isTrusted(by: sources) != nil {
                    digests += package.files.map(\.digest)
                }
            }
            return digests
        }, uid: { uids[$0] })
    }

    /// The interpreters the current policy declares (format version 3).
    public var declaredInterpreters: [DeclaredInterpreter] { current.withLock { $0.policy?.interpreters ?? [] } }

    /// Programs the overlays the policy trusts allow (digest and installed path).
    public var overlayPrograms: [(digest: SHA256Digest, path: String)] { current.withLock { $0.overlayTable.programs } }

    /// Whether the current policy has any fs-verity digest (else measuring files is pointless).
    public var usesVerity: Bool { current.withLock { ($0.policy?.verity.count ?? 0) > 0 } }

    /// The content digest the current policy pairs with a file's fs-verity digest, if it has one.
    public func contentDigest(forVerity digest: SHA256Digest) -> SHA256Digest? {
        current.withLock { $0.policy?.verity.contentDigest(forVerity: digest) }
    }

    /// False when no allow entry of the current policy can have this size (so hashing is pointless). True for a
    /// file only root can write while a maintenance window is open: the window may be about to allow it (windows
    /// trust only such files; anyone else's stays filtered, so a user's 8 TiB sparse file cannot tie up the workers).
    public func mayAllow(size: Int64, onlyRootCanWrite: Bool = false) -> Bool {
        if onlyRootCanWrite, let windowOpen, windowOpen() { return true }
        return current.withLock { c in
            guard let filter = c.policy?.allowedSizes else { return c.policy != nil ? true : false }
            return size >= 0 && (filter.mayContain(UInt64(size)) || c.overlayTable.sizes.contains(UInt64(size)))
        }
    }
    public func setMode(_ mode: Mode) { current.withLock { $0.mode = mode } }

    /// What `status` shows of the policy, read under one lock.
    public struct Snapshot: Sendable {
        public var policy: PolicyHeader?
        /// The layers in force (base first); empty for a single policy file.
        public var layers: [PolicyLayer] = []
        public var candidateLayers: [PolicyLayer] = []
        public var candidateError: String?
        public var candidateWouldDenyPrograms = 0
        /// Supplements left out of the set in force (for other hosts, or expired).
        public var skippedLayers: [String] = []
        public var totalAllowCount = 0
        public var path: String?
        public var mode: Mode
        public var lastError: String?
        public var source: Source
        /// Subjects with an execution profile in force; user subjects no user of this host has; whether profiles are learned.
        public var profileSubjects = 0
        public var unresolvedProfileUsers: [String] = []
        public var learningProfiles = false
        public var allowCount: Int { policy?.allowCount ?? 0 }
        public var denyCount: Int { policy?.denyCount ?? 0 }
    }

    public var snapshot: Snapshot {
        current.withLock { c in
            var snapshot = Snapshot(policy: c.policy?.header, layers: c.policy?.layers ?? [], candidateLayers: c.candidate?.layers ?? [], candidateError: c.candidateError,
                     candidateWouldDenyPrograms: c.candidateWouldDeny.count, skippedLayers: c.policy?.skippedLayers ?? [],
                     totalAllowCount: c.policy?.totalAllowCount ?? 0,
                     path: c.policy?.path, mode: c.mode, lastError: c.lastError, source: c.source)
            snapshot.profileSubjects = c.profiles.subjectCount
            snapshot.unresolvedProfileUsers = c.profiles.unresolvedUsers
            snapshot.learningProfiles = c.mode == .learn || (c.mode == .monitor && c.learnProfilesInMonitorMode)
            return snapshot
        }
    }

    /// Loads, verifies and applies a policy; on any failure the current policy stays and the reason is kept.
    @discardableResult
    public func apply(path: String, keyPath: String, allowRollback: Bool) -> Result<PolicyHeader, PolicyRefusal> {
        let result = load(path: path, keyPath: keyPath, allowRollback: allowRollback)
        if case .success(let policy) = result { keepCopyInTheBackground(of: policy) }
        swapIn(result)
        return result.map(\.header)
    }

    /// Puts a policy just loaded in force (the overlays re-derived for it, outside the decision lock), or keeps the
    /// one in force and remembers why not.
    private func swapIn(_ result: Result<LoadedPolicy, PolicyRefusal>) {
        rebuilding.withLock { _ in
            let overlays = current.withLock { $0.overlays }
            let table = (try? result.get()).map { OverlayTable(overlays, header: $0.header) }
            let profiles = (try? result.get()).map { Self.compileProfiles($0, overlays: overlays) }
            current.withLock { c in
                switch result {
                case .success(let policy):
                    c.policy = policy
                    c.lastError = nil
                    c.source = .configured
                    c.overlayTable = table!
                    c.profiles = profiles!
                case .failure(let refusal):
                    c.lastError = refusal.description
                }
            }
        }
    }

    /// At start, when the configured policy is missing, corrupt, out of scope or expired: applies the newest copy
    /// of a policy this host applied before (verified again with the configured key; expiry does not drop a policy
    /// already applied). The daemon keeps enforcing rather than start with nothing.
    /// The copy tried first is the one whose serial is the last applied (an explicit rollback included: copies
    /// above it are never used); the fallback never records a serial of its own.
    public func applyLastKnownGood(keyPath: String, because refusal: PolicyRefusal) -> Result<PolicyHeader, PolicyRefusal> {
        let last: UInt64?
        do { last = try lastAppliedSerial() } catch {
            return .failure(PolicyRefusal(error.description))
        }
        let copies = appliedCopies().filter { last == nil || $0.serial <= last! }
        guard !copies.isEmpty else { return .failure(PolicyRefusal("no last-known-good policy in \(copiesDirectory)")) }
        var reasons: [String] = []
        for (_, path) in copies {
            switch load(path: path, keyPath: keyPath, allowRollback: true, acceptExpired: true, recordsSerial: false) {
            case .success(let policy):
                return .success(swapInLastKnownGood(policy, because: refusal))
            case .failure(let why):
                reasons.append(why.description)
            }
        }
        return .failure(PolicyRefusal("no usable last-known-good policy: " + reasons.joined(separator: "; ")))
    }

    /// Puts a last-known-good policy in force (at start, before any decision: no need to build the table outside the lock).
    private func swapInLastKnownGood(_ policy: LoadedPolicy, because refusal: PolicyRefusal) -> PolicyHeader {
        current.withLock { c in
            c.policy = policy
            c.lastError = refusal.description
            c.source = .lastKnownGood(because: refusal.description)
            c.overlayTable = OverlayTable(c.overlays, header: policy.header)
            c.profiles = Self.compileProfiles(policy, overlays: c.overlays)
        }
        return policy.header
    }

    var copiesDirectory: String { stateDirectory + "/applied" }

    /// The kept copies, newest serial first.
    func appliedCopies() -> [(serial: UInt64, path: String)] {
        guard let names = try? listDirectory(copiesDirectory) else { return [] }
        return names.compactMap { name -> (UInt64, String)? in
            guard name.hasPrefix("policy-"), name.hasSuffix(".txt"),
                  let serial = UInt64(name.dropFirst("policy-".count).dropLast(".txt".count)) else { return nil }
            return (serial, copiesDirectory + "/" + name)
        }.sorted { $0.0 > $1.0 }
    }

    /// Keeps a copy of a policy just applied, for `applyLastKnownGood`. Copied after verification; the copy is
    /// verified again whenever it is used, so a file replaced in between is refused then, not trusted.
    /// Copying a large policy (a 1M-entry one is ~100 MB, written and synced) must not delay start-up or a reload's
    /// answer: one copy at a time, on a thread of its own. Until it is done the previous copies stand.
    private let copying = Mutex<Void>(())
    private let copiesInFlight = DispatchGroup()

    private func keepCopyInTheBackground(of policy: LoadedPolicy) {
        let serial = policy.header.serial, path = policy.path
        copiesInFlight.enter()
        startThread(name: "appctl-lkg-copy") { [self] in
            copying.withLock { _ in keepCopy(serial: serial, path: path) }
            copiesInFlight.leave()
        }
    }

    /// Waits until every copy started is done (shutdown: a copy being written is finished, not cut off).
    public func waitForCopies() { copiesInFlight.wait() }

    private func keepCopy(serial: UInt64?, path: String) {
        guard let serial else { return }
        mkdir(stateDirectory, 0o700)
        mkdir(copiesDirectory, 0o700)
        // A rollback (`--allow-rollback`) supersedes the copies above it: never fall back to what was rolled back from.
        for (copySerial, old) in appliedCopies() where copySerial > serial { unlink(old) }
        let target = copiesDirectory + "/policy-\(serial).txt"
        // Every start applies the same policy again: a copy of this serial and size is already there (a 1M-entry
        // policy is ~100 MB to copy and sync). The copy is verified whenever it is used, so this cannot trust a
        // different file; at worst a stale copy of the same serial is refused then, and an older one used.
        if let copy = try? linkStatus(target), let original = try? linkStatus(path), copy.st_size == original.st_size { return }
        do {
            try copyFile(from: path, to: target, permissions: 0o600)
        } catch {
            Self.warn("appctl: WARNING: cannot keep a last-known-good copy of \(path) in \(copiesDirectory): \(error)")
            return
        }
        for (_, old) in appliedCopies().dropFirst(Self.keptCopies) { unlink(old) }
    }

    static func warn(_ line: String) { try? FileDescriptor(rawValue: 2).writeAll(Array((line + "\n").utf8)) }

    static func readKey(_ keyPath: String) -> Result<Ed25519PublicKey, PolicyRefusal> {
        do {
            return .success(try Ed25519PublicKey(pem: try readSmallFile(keyPath, limit: 64 * 1024)))
        } catch {
            return .failure(PolicyRefusal("\(keyPath): cannot use public key: \(error)"))
        }
    }

    private func load(path: String, keyPath: String, allowRollback: Bool, acceptExpired: Bool = false,
                      recordsSerial: Bool = true) -> Result<LoadedPolicy, PolicyRefusal> {
        let key: Ed25519PublicKey
        switch Self.readKey(keyPath) {
        case .success(let k): key = k
        case .failure(let refusal): return .failure(refusal)
        }
        let policy: LoadedPolicy
        do { policy = try LoadedPolicy.load(path: path, key: key, acceptExpired: acceptExpired) } catch {
            return .failure(PolicyRefusal(error.description))
        }
        let header = policy.header
        if !header.scope.isEmpty && !header.scope.contains(where: { globMatches($0, hostname) }) {
            return .failure(PolicyRefusal("\(path): policy is for hosts \(header.scope.joined(separator: ",")), not \(hostname)"))
        }
        let serial = header.serial!
        let last: UInt64?
        do { last = try lastAppliedSerial() } catch { return .failure(PolicyRefusal(error.description)) }
        if let last, serial < last, !allowRollback {
            return .failure(PolicyRefusal("\(path): serial \(serial) is lower than \(last), the last applied on this host (rollback refused; --allow-rollback overrides)"))
        }
        if recordsSerial && (last == nil || serial > last! || allowRollback) {
            do { try recordSerial(serial) } catch {
                return .failure(PolicyRefusal("\(stateDirectory)/last-serial: cannot record the serial: \(error)"))
            }
        }
        return .success(policy)
    }

    private var serialFile: String { stateDirectory + "/last-serial" }

    /// The serial last applied on this host; nil when none was ever recorded. A record that exists but cannot be
    /// read or parsed is an error, never "none": that would switch rollback protection off.
    public func lastAppliedSerial() throws(PolicyRefusal) -> UInt64? {
        let bytes: [UInt8]
        do { bytes = try readSmallFile(serialFile, limit: 4096) } catch {
            if error == .noSuchFile { return nil }
            throw PolicyRefusal("\(serialFile): cannot read the last applied serial: \(error) (rollback protection needs it; fix or remove it)")
        }
        guard let serial = UInt64(String(decoding: bytes, as: UTF8.self).trimmingSpaces().split(separator: "\n").first ?? "") else {
            throw PolicyRefusal("\(serialFile): not a serial number (rollback protection needs it; fix or remove it)")
        }
        return serial
    }

    private func recordSerial(_ serial: UInt64) throws(Errno) {
        mkdir(stateDirectory, 0o700)
        try AtomicFileWriter.write(Array("\(serial)\n".utf8), to: serialFile, permissions: 0o600)
    }
}

// MARK: - Policy layers (a policy directory: `--policy-dir`)

extension PolicyState {
    var layerCopiesDirectory: String { stateDirectory + "/applied-layers" }
    var layerSetFile: String { layerCopiesDirectory + "/set" }

    /// Loads, verifies and applies the layer set in `directory` (`PolicyLayers`): refused whole when any layer is
    /// refused, for another host, older than the serial applied for its name, or shrunk without saying so. The set
    /// in force stays on any failure. Then loads the candidate set, if the directory holds one.
    @discardableResult
    public func applyLayers(directory: String, keyPath: String, allowRollback: Bool) -> Result<PolicyHeader, PolicyRefusal> {
        let result = loadLayers(directory: directory, keyPath: keyPath, allowRollback: allowRollback)
        if case .success(let policy) = result { keepLayerCopiesInTheBackground(policy.layers) }
        swapIn(result)
        // Also when the set in force stays: the candidate files may have changed with the directory.
        loadCandidate(directory: directory, keyPath: keyPath)
        return result.map(\.header)
    }

    private func loadLayers(directory: String, keyPath: String, allowRollback: Bool) -> Result<LoadedPolicy, PolicyRefusal> {
        let key: Ed25519PublicKey
        switch Self.readKey(keyPath) {
        case .success(let k): key = k
        case .failure(let refusal): return .failure(refusal)
        }
        let policy: LoadedPolicy
        let records: LayerRecords
        do {
            policy = try PolicyLayers.load(directory: directory, key: key, hostname: hostname)
            records = try LayerRecords.read(stateDirectory: stateDirectory)
        } catch {
            return .failure(PolicyRefusal(error.description))
        }
        let inForce = current.withLock { $0.policy?.layers ?? [] }
        if let refusal = records.refusal(of: policy.layers, hostname: hostname, allowRollback: allowRollback, inForce: inForce) {
            return .failure(PolicyRefusal(refusal))
        }
        // Serials only grow (an explicit rollback lowers them).
        var next = records
        for layer in policy.layers where allowRollback || (records.byName[layer.name]?.serial ?? 0) <= layer.header.serial! {
            next = next.updated(with: [layer])
        }
        if next != records {
            do { try next.write(stateDirectory: stateDirectory) } catch {
                return .failure(PolicyRefusal("\(LayerRecords.path(stateDirectory: stateDirectory)): cannot record the layer serials: \(error)"))
            }
        }
        return .success(policy)
    }

    /// The candidate set (`*.candidate` files standing in for the layers of the same name): verified like the set
    /// in force but never recorded, never enforced. Evaluated next to it on every decision; `status` counts what it
    /// would deny. None in the directory: no candidate.
    public func loadCandidate(directory: String, keyPath: String) {
        let files = (try? PolicyLayers.files(in: directory, suffix: PolicyLayers.candidateSuffix)) ?? []
        var candidate: LoadedPolicy?
        var error: String?
        if !files.isEmpty {
            switch Self.readKey(keyPath) {
            case .success(let key):
                do { candidate = try PolicyLayers.load(directory: directory, key: key, candidates: true, hostname: hostname) } catch let e { error = e.description }
            case .failure(let refusal): error = refusal.description
            }
        }
        current.withLock { c in
            if c.candidate?.layers != candidate?.layers { c.candidateWouldDeny = [] }
            c.candidate = candidate
            c.candidateError = error
        }
    }

    /// At start, when the directory's set is refused: the set this host applied last, from its copies (verified
    /// again; expiry does not drop a set already applied). The serial records are left as they are.
    public func applyLastKnownGoodLayers(keyPath: String, because refusal: PolicyRefusal) -> Result<PolicyHeader, PolicyRefusal> {
        let key: Ed25519PublicKey
        switch Self.readKey(keyPath) {
        case .success(let k): key = k
        case .failure(let why): return .failure(why)
        }
        let members: [(name: String, serial: UInt64)]
        do {
            let text = String(decoding: try readSmallFile(layerSetFile, limit: 1 << 20), as: UTF8.self)
            members = text.split(separator: "\n").compactMap { line in
                let f = line.split(separator: " ")
                guard f.count == 2, let serial = UInt64(f[1]) else { return nil }
                return (String(f[0]), serial)
            }
        } catch {
            return .failure(PolicyRefusal("no last-known-good layer set in \(layerCopiesDirectory): \(error)"))
        }
        let files = members.map { m in
            (name: m.name, path: layerCopiesDirectory + "/\(m.name)-\(m.serial).policy", shown: layerCopiesDirectory + "/\(m.name)-\(m.serial).policy")
        }
        let policy: LoadedPolicy
        do { policy = try PolicyLayers.compose(files, key: key, acceptExpired: true, hostname: hostname) } catch {
            return .failure(PolicyRefusal("no usable last-known-good layer set: \(error)"))
        }
        for layer in policy.layers where members.first(where: { $0.name == layer.name })?.serial != layer.header.serial {
            return .failure(PolicyRefusal("\(layer.path): holds serial \(layer.header.serial!), not the one the last-known-good set names"))
        }
        // Older than what this host applied since (a copy that failed after a newer set was applied): enforced all the
        // same (an older set is better than none), and said loudly.
        let records = (try? LayerRecords.read(stateDirectory: stateDirectory)) ?? LayerRecords()
        let older = policy.layers.filter { layer in
            let recorded = [layer.name] + (layer.isSupplement ? [] : [LayerRecords.baseRole])
            return recorded.contains { (records.byName[$0]?.serial ?? 0) > layer.header.serial! }
        }
        if !older.isEmpty {
            Self.warn("appctl: WARNING: the last-known-good layer set is OLDER than what this host applied (\(older.map { "\($0.name) \($0.header.serial!)" }.joined(separator: ", "))): what the newer set revoked may run again")
        }
        return .success(swapInLastKnownGood(policy, because: refusal))
    }

    /// Copies of the set just applied, for `applyLastKnownGoodLayers`: `<name>-<serial>.policy` and a `set` file
    /// naming them, written after the copies; copies of no longer applied layers go after that. On a thread of its
    /// own (a 1M-entry base is ~100 MB to copy and sync).
    private func keepLayerCopiesInTheBackground(_ layers: [PolicyLayer]) {
        copiesInFlight.enter()
        startThread(name: "appctl-lkg-copy") { [self] in
            copying.withLock { _ in keepLayerCopies(layers) }
            copiesInFlight.leave()
        }
    }

    private func keepLayerCopies(_ layers: [PolicyLayer]) {
        mkdir(stateDirectory, 0o700)
        mkdir(layerCopiesDirectory, 0o700)
        var keep: Set<String> = ["set"]
        for layer in layers {
            let name = "\(layer.name)-\(layer.header.serial!).policy", target = layerCopiesDirectory + "/" + name
            keep.insert(name)
            if let copy = try? linkStatus(target), let original = try? linkStatus(layer.path), copy.st_size == original.st_size { continue }
            do { try copyFile(from: layer.path, to: target, permissions: 0o600) } catch {
                Self.warn("appctl: WARNING: cannot keep a last-known-good copy of \(layer.path) in \(layerCopiesDirectory): \(error)")
                return
            }
            // Copied by path after the set was applied: the directory may hold another set by now. The copy is only
            // kept if it is the serial applied (it is verified again whenever it is used).
            guard (try? PolicyLayers.readHeader(path: target, shown: target))?.serial == layer.header.serial else {
                unlink(target)
                Self.warn("appctl: WARNING: \(layer.path) changed before its last-known-good copy was made; the previous copies stay")
                return
            }
        }
        let set = layers.map { "\($0.name) \($0.header.serial!)\n" }.joined()
        do { try AtomicFileWriter.write(Array(set.utf8), to: layerSetFile, permissions: 0o600) } catch {
            Self.warn("appctl: WARNING: cannot record the last-known-good layer set in \(layerSetFile): \(error)")
            return
        }
        for name in (try? listDirectory(layerCopiesDirectory)) ?? [] where !keep.contains(name) { unlink(layerCopiesDirectory + "/" + name) }
    }
}
