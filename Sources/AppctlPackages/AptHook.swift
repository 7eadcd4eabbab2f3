import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Hashes the files a `.deb` will install and its maintainer scripts, through a well-kept archive reader
/// (the `appctl-apt-hook` program: dpkg-deb's tar streams read by libarchive). Kept behind a protocol so that
/// the daemon and the main `appctl` binary never link the archive library.
public protocol DebContentHasher: Sendable {
    /// Every executable regular file of the package's data (path as installed, e.g. `/usr/bin/jq`) and every
    /// maintainer script (path `/var/lib/dpkg/info/<package>.<script>`, where dpkg runs it from).
    func executableFiles(ofDeb deb: AptArchive.VerifiedDeb, package: String, architecture: String) throws(ChainFailure) -> [OverlayFile]
}

/// Where the hook finds what it needs: the daemon's configuration, read the same way the daemon reads it.
public struct AptHookSettings: Sendable {
    public var policyPath: String?
    /// The key the policy is verified with (gate mode compares against the verified allow list).
    public var publicKeyPath: String?
    public var socketPath: String
    public var stateDirectory: String
    /// The configured mode: decides whether a daemon that does not answer in time stops apt (enforce) or not.
    public var configuredMode: Mode
    /// How long the daemon may take to take the overlay in.
    public var daemonTimeoutSeconds = 10
    public var dpkgStatusPath = DpkgStatus.defaultPath

    public init(policyPath: String?, socketPath: String, stateDirectory: String, configuredMode: Mode) {
        self.policyPath = policyPath; self.socketPath = socketPath; self.stateDirectory = stateDirectory; self.configuredMode = configuredMode
    }

    public var store: OverlayStore { OverlayStore(stateDirectory: stateDirectory) }
}

/// The apt hook's two entry points. Each returns the lines to print (apt shows them) and whether apt may go on.
public enum AptHook {
    public struct Outcome: Sendable {
        public var lines: [String] = []
        public var proceed = true
        public mutating func say(_ line: String) { lines.append("appctl: " + line) }
    }

    /// The local-trust lines of the configured policy's header. Only the header is read here, without checking
    /// the signature: the daemon checks every overlay record against the policy it verified, so a forged header
    /// could only make the hook derive entries the daemon then ignores (and the hook then stops apt when enforcing).
    public static func policyHeader(_ path: String?) -> (header: PolicyHeader?, problem: String?) {
        guard let path else { return (nil, "no policy configured") }
        var header: PolicyHeader?
        do {
            _ = try PolicyReader(path: path).read(onHeader: { header = $0 }, onAllow: { (_) throws(PolicyError) in
                throw PolicyError(.io, file: path, "header read")   // stop at the first entry: the header is all we need
            })
        } catch {
            if header == nil { return (nil, error.description) }
        }
        return (header, nil)
    }

    /// `DPkg::Pre-Install-Pkgs`: before dpkg unpacks anything, verify every `.deb` of the transaction through the
    /// archive's chain, write the trusted packages' files to the `apt` overlay, and have the daemon take it in.
    /// apt stops (exit 1) when the host enforces (the daemon's mode; the configured one when it does not answer)
    /// and something would be denied half-way through dpkg: a package nothing vouches for (unless the policy says
    /// `apt-unverified report`), a gate that does not pass, an overlay that cannot be written, a daemon that does
    /// not take the overlay in.
    public static func preInstall(_ request: AptHookRequest, settings: AptHookSettings, hasher: DebContentHasher,
                                  archive: AptArchive? = nil) -> Outcome {
        var outcome = Outcome()
        let unpacks = request.unpacks
        guard !unpacks.isEmpty else { return outcome }
        let (header, problem) = policyHeader(settings.policyPath)
        let rules = header?.aptSources ?? []
        if let problem { outcome.say("cannot read the policy's apt sources (\(problem)); nothing derived") }
        guard !rules.isEmpty else {
            if problem == nil { outcome.say("the signed policy names no apt source: nothing derived from this transaction (\(unpacks.count) packages)") }
            return outcome
        }
        let mode: Mode
        var windowOpen = false
        switch daemonMode(settings: settings) {
        case .running(let m, let window): mode = m; windowOpen = window
        case .notRunning: mode = settings.configuredMode
        case .notAnswering(let why):
            daemonDidNotAnswer(why, mode: settings.configuredMode, outcome: &outcome)
            if !outcome.proceed { return outcome }
            mode = settings.configuredMode
        }
        let unverifiedRule = header?.aptUnverified ?? (mode == .enforce ? .refuse : .report)
        let refuseUnverified = unverifiedRule == .refuse || (unverifiedRule == .maintenance && !windowOpen)

        let archive = archive ?? AptArchive(listsDirectory: request.directory("Dir::State::lists", default: "/var/lib/apt/lists/"))
        let lookup = archive.lookUp(Set(unpacks.compactMap { a in a.newVersion.map { AptArchive.PackageKey(name: a.package, version: $0) } }))
        // First every .deb through the chain and the policy's rules (quick), then the members of those that need
        // them hashed on every core (dpkg-deb's decompression is most of the hook's time), then the report in order.
        struct Verified { var action: AptHookRequest.Action; var deb: AptArchive.VerifiedDeb; var rule: AptSourceRule; var architecture: String }
        var steps: [(label: String, verified: Verified?)] = []
        var untrusted: [String] = []
        defer { for case let (_, v?) in steps { v.deb.close() } }
        for action in unpacks {
            guard let debPath = action.debPath, let version = action.newVersion else { continue }
            let label = "\(action.package)=\(version)"
            let deb: AptArchive.VerifiedDeb
            do { deb = try AptArchive.verifyDeb(path: debPath, package: action.package, version: version, in: lookup) } catch {
                outcome.say("NOT VERIFIED \(label): \(error.description); its files are trusted by nothing here")
                untrusted.append(label)
                continue
            }
            // Every Release file that lists this .deb is asked; the most restrictive rule among them governs.
            let governing = deb.records.compactMap { r in
                AptSourceRule.governing(rules, signers: r.release.signers, origin: r.release.origin, suite: r.release.suite, codename: r.release.codename)
            }.min { $0.mode.restriction > $1.mode.restriction }
            guard let rule = governing else {
                let release = deb.record.release
                outcome.say("not trusted \(label): \(release.path) is signed by \(release.signers.sorted().joined(separator: ",")), which no apt-source line of the policy names")
                untrusted.append(label)
                deb.close()
                continue
            }
            steps.append((label, Verified(action: action, deb: deb, rule: rule, architecture: action.newArchitecture ?? deb.record.architecture)))
        }
        let toHash = steps.compactMap(\.verified).filter { $0.rule.mode != .report }
        let hashed = Mutex<[String: Result<[OverlayFile], ChainFailure>]>([:])
        DispatchQueue.concurrentPerform(iterations: toHash.count) { i in
            let v = toHash[i]
            let result = Result { () throws(ChainFailure) in
                try hasher.executableFiles(ofDeb: v.deb, package: v.action.package, architecture: v.architecture)
            }
            hashed.withLock { $0[v.deb.path] = result }
        }
        let members = hashed.withLock { $0 }
        var derived: [OverlayPackage] = []
        var gatePolicy: Result<LoadedPolicy, PolicyError>?
        for case let (label, v?) in steps {
            let release = v.deb.records.first { v.rule.matches(signers: $0.release.signers, origin: $0.release.origin, suite: $0.release.suite, codename: $0.release.codename) }?.release
                ?? v.deb.record.release
            switch (v.rule.mode, members[v.deb.path]) {
            case (.report, _):
                outcome.say("report only \(label): verified (\(v.rule)), nothing derived")
            case (_, .failure(let error)?):
                outcome.say("NOT TRUSTED \(label): \(error.description)")
                untrusted.append(label)
                if v.rule.mode == .gate { outcome.proceed = false }
            case (.gate, .success(let files)?):
                // Derive nothing: the signed policy must carry the update already, or apt stops here.
                if let why = gateCheck(files, settings: settings, policy: &gatePolicy) {
                    outcome.say("gate \(label): \(why); stopping apt before dpkg runs")
                    outcome.proceed = false
                } else {
                    outcome.say("gate \(label): every executable file is already allowed by the signed policy")
                }
            case (.auto, .success(let files)?):
                let signer = release.signers.sorted().first { v.rule.signer == $0 } ?? v.rule.signer
                derived.append(OverlayPackage(name: v.action.package, version: v.action.newVersion!, architecture: v.architecture,
                                              debDigest: v.deb.digest, signer: signer, origin: release.origin ?? "-", suite: release.suite ?? "-",
                                              codename: release.codename ?? "-", files: files))
            case (_, nil):
                outcome.say("NOT TRUSTED \(label): its members were not read")
                untrusted.append(label)
            }
        }
        if !untrusted.isEmpty && refuseUnverified {
            outcome.say("stopping apt before dpkg runs: \(untrusted.count) packages would be trusted by nothing (\(untrusted.prefix(8).joined(separator: " "))\(untrusted.count > 8 ? " …" : "")) and this host \(header?.aptUnverified == .refuse ? "refuses them (apt-unverified refuse)" : header?.aptUnverified == .maintenance ? "takes them only inside a maintenance window (appctl maintenance start -- apt-get …)" : "enforces; a policy with apt-unverified report lets them install, trusted by nothing")")
            outcome.proceed = false
        }
        guard !derived.isEmpty, outcome.proceed else { return outcome }
        // Written (and synced) before the daemon is told: a daemon that restarts reads it from disk.
        do {
            _ = try settings.store.withLock(wait: true) { () throws(OverlayError) in
                var overlay = try settings.store.read(layer: "apt")
                let replaced = Set(derived.map(\.label))
                overlay.packages.removeAll { replaced.contains($0.label) }
                overlay.packages += derived
                try settings.store.write(overlay)
                // What post-invoke checks on disk once dpkg is done.
                let transaction = derived.map { "\($0.name) \($0.version) \($0.architecture)\n" }.joined()
                do { try AtomicFileWriter.write(Array(transaction.utf8), to: settings.store.directory + "/apt.transaction", permissions: 0o600) } catch {
                    throw OverlayError("\(settings.store.directory)/apt.transaction: cannot write: \(error)")
                }
            }
        } catch {
            outcome.say("cannot write the apt overlay: \(error.description)")
            if mode == .enforce {
                outcome.proceed = false
                outcome.say("stopping apt before dpkg runs: in enforce mode its programs would be denied")
            }
            return outcome
        }
        let files = derived.reduce(0) { $0 + $1.files.count }
        outcome.say("trusted \(derived.count) verified packages (\(files) executable files) in overlay:apt" + (untrusted.isEmpty ? "" : "; \(untrusted.count) not trusted"))
        switch notifyDaemon(settings: settings, expecting: derived.map(\.label), outcome: &outcome) {
        case .tookIt: break
        case .notRunning: outcome.say("the daemon is not running; it loads the overlay when it starts")
        case .failed(let why): daemonDidNotAnswer(why, mode: mode, outcome: &outcome)
        }
        return outcome
    }

    /// `appctl learn --apt-cache`: verifies `.deb` files (named `<package>_<version>_<arch>.deb`, as apt's cache
    /// names them, `:` as `%3a`) through the chain and prints, for each, `verified <package> <version> <arch>` and
    /// its files as `file <sha256> <escaped path>`, or `unverified <escaped deb path> <escaped reason>`.
    public static func verifyDebs(_ debs: [String], archive: AptArchive, hasher: DebContentHasher) -> [String] {
        let parsed: [(deb: String, key: AptArchive.PackageKey, arch: String)] = debs.compactMap { deb in
            AptArchive.parseDebFileName(deb).map { (deb, $0.key, $0.architecture) }
        }
        let lookup = archive.lookUp(Set(parsed.map(\.key)))
        let results = Mutex<[Int: [String]]>([:])
        DispatchQueue.concurrentPerform(iterations: parsed.count) { i in
            let p = parsed[i]
            var lines: [String] = []
            do {
                let deb = try AptArchive.verifyDeb(path: p.deb, package: p.key.name, version: p.key.version, in: lookup)
                defer { deb.close() }
                let files = try hasher.executableFiles(ofDeb: deb, package: p.key.name, architecture: p.arch)
                lines.append("verified \(p.key.name) \(p.key.version) \(p.arch)")
                lines += files.map { "file \($0.digest) \($0.escapedPath)" }
            } catch {
                lines = ["unverified \(PathEscaping.escapeToken(Array(p.deb.utf8))) \(PathEscaping.escapeToken(Array("\(error)".utf8)))"]
            }
            results.withLock { $0[i] = lines }
        }
        let all = results.withLock { $0 }
        return (0..<parsed.count).flatMap { all[$0] ?? [] }
    }

    /// dpkg's own `pre-invoke` hook (best effort for `dpkg -i` used directly): dpkg does not say which packages,
    /// so none can be verified. When apt runs dpkg (`DPKG_FRONTEND_LOCKED` is set) the apt hook has done the
    /// work; otherwise an install or unpack is a package nothing vouches for, handled as `apt-unverified` says.
    public static func dpkgPreInvoke(settings: AptHookSettings, action: String?, fromApt: Bool) -> Outcome {
        var outcome = Outcome()
        guard !fromApt, let action, ["install", "unpack"].contains(action) else { return outcome }
        let (header, _) = policyHeader(settings.policyPath)
        guard let header, !header.aptSources.isEmpty || header.aptUnverified != nil else { return outcome }
        var mode = settings.configuredMode, windowOpen = false
        switch daemonMode(settings: settings) {
        case .running(let m, let window): mode = m; windowOpen = window
        case .notRunning, .notAnswering: break
        }
        let rule = header.aptUnverified ?? (mode == .enforce ? .refuse : .report)
        switch rule {
        case .report:
            outcome.say("dpkg used directly (\(action)): its packages are verified by nothing and trusted by nothing here")
        case .maintenance where windowOpen:
            outcome.say("dpkg used directly (\(action)) inside a maintenance window: what it writes is trusted as the window's")
        case .maintenance, .refuse:
            outcome.say("dpkg used directly (\(action)): packages installed this way are verified by nothing, and this host refuses them"
                + (rule == .maintenance ? " outside a maintenance window (appctl maintenance start -- dpkg -i ...)" : " (install through apt from a source the policy names)"))
            outcome.proceed = false
        }
        return outcome
    }

    /// Gate mode: nil when every executable file of the package is allowed by the verified signed policy, else why not.
    static func gateCheck(_ files: [OverlayFile], settings: AptHookSettings, policy: inout Result<LoadedPolicy, PolicyError>?) -> String? {
        if policy == nil {
            guard let path = settings.policyPath, let keyPath = settings.publicKeyPath else { return "no policy and key configured to check against" }
            do {
                let key = try Ed25519PublicKey(pem: try readSmallFile(keyPath, limit: 64 * 1024))
                policy = Result { () throws(PolicyError) in try LoadedPolicy.load(path: path, key: key) }
            } catch {
                return "\(keyPath): cannot use the public key: \(error)"
            }
        }
        let loaded: LoadedPolicy
        switch policy! {
        case .success(let p): loaded = p
        case .failure(let error): return "the policy does not verify: \(error)"
        }
        let missing = files.filter { loaded.lookup($0.digest) != .known }
        guard let first = missing.first else { return nil }
        return "\(missing.count) of its \(files.count) executable files are not in the signed policy (first: \(PathEscaping.unescapedString(first.escapedPath)) sha256 \(first.digest))"
    }

    /// `DPkg::Post-Invoke`: dpkg is done. Retire the overlay records of package versions that are no longer on
    /// the machine (upgraded or removed), and always have the daemon read the overlays again: the files are on
    /// disk now, so interpreters among them are found where they are installed.
    public static func postInvoke(settings: AptHookSettings) -> Outcome {
        var outcome = Outcome()
        do {
            let status = try DpkgStatus(path: settings.dpkgStatusPath)
            let retired = try settings.store.withLock(wait: true) { () throws(OverlayError) in try settings.store.retire(layer: "apt", installed: status) } ?? []
            if !retired.isEmpty {
                outcome.say("retired \(retired.count) package versions no longer installed from overlay:apt: \(retired.prefix(8).joined(separator: " "))\(retired.count > 8 ? " …" : "")")
            }
        } catch {
            outcome.say("cannot reconcile the apt overlay with dpkg's database: \(error.description)")
        }
        for line in unexplainedContent(settings: settings) { outcome.say(line) }
        // dpkg has run: whatever the daemon says, apt is not stopped now (failing would only hide the message).
        if (try? linkStatus(settings.store.path(of: "apt"))) != nil,
           case .failed(let why) = notifyDaemon(settings: settings, expecting: [], outcome: &outcome) {
            outcome.say("the daemon did not take the updated overlay in (\(why)); it reads it at its next start or 'appctl overlay-reload'")
        }
        return outcome
    }

    /// After the transaction: executable files dpkg lists for the packages just trusted whose content is not what
    /// their verified `.deb` held — kept conffiles an admin changed, diversions, files a maintainer script rewrote.
    /// The overlay does not explain them; unless the signed policy does, enforce mode denies them. Reported, one
    /// line each (at most 20). Files a maintainer script creates outside dpkg's lists are not seen here
    /// (`appctl drift` finds them).
    static func unexplainedContent(settings: AptHookSettings) -> [String] {
        // dpkg's admin directory holds its status file (the one the settings name).
        let adminDirectory = String(settings.dpkgStatusPath[..<(settings.dpkgStatusPath.lastIndex(of: "/") ?? settings.dpkgStatusPath.endIndex)])
        let transactionPath = settings.store.directory + "/apt.transaction"
        guard let bytes = try? readSmallFile(transactionPath, limit: 16 << 20) else { return [] }
        defer { unlink(transactionPath) }
        guard let overlay = try? settings.store.read(layer: "apt") else { return [] }
        var lines: [String] = []
        let hasher = FileHasher()
        for record in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let f = record.split(separator: " ").map(String.init)
            guard f.count == 3, let package = overlay.packages.first(where: { $0.name == f[0] && $0.version == f[1] && $0.architecture == f[2] }) else { continue }
            let known = Set(package.files.map(\.digest))
            let list = [adminDirectory + "/info/\(f[0]):\(f[2]).list", adminDirectory + "/info/\(f[0]).list"]
                .lazy.compactMap { try? readSmallFile($0, limit: 64 << 20) }.first ?? []
            for raw in list.split(separator: UInt8(ascii: "\n")) {
                let path = String(decoding: raw, as: UTF8.self)
                guard let fd = try? FileDescriptor.open(path, [.readOnly, .nonBlocking, .noFollow]) else { continue }
                defer { fd.close() }
                guard let st = try? fd.status(), st.isRegularFile else { continue }
                let head = fd.readBytes(at: 0, count: ContentClassifier.headerLength)
                guard ContentClassifier.classify(head: head, executableBit: st.isExecutableByMode, readAt: { fd.readBytes(at: $0, count: $1) }) != nil,
                      let digest = try? hasher.hash(fd).sha256, !known.contains(digest) else { continue }
                if lines.count < 20 { lines.append("\(path) (\(package.label)): executable content not from its verified package (a kept conffile, a diversion, or a script's rewrite): not trusted by overlay:apt") }
            }
        }
        return lines
    }

    enum DaemonState { case running(Mode, windowOpen: Bool), notRunning, notAnswering(String) }

    /// The daemon's mode, asked over its control socket within the bound.
    static func daemonMode(settings: AptHookSettings) -> DaemonState {
        switch request(.status(json: true), settings: settings) {
        case .success(let reply):
            let mode = Mode.allCases.first { reply.body.contains("\"mode\":\"\($0.rawValue)\"") || reply.body.contains("\"mode\": \"\($0.rawValue)\"") }
            // A window counts only if this process runs inside it: the same mount namespace as the window's
            // process (`maintenance_window_pid`, null when none is open). apt run elsewhere is not the window's.
            var inWindow = false
            if let range = reply.body.suffix(after: "\"maintenance_window_pid\":"), let pid = Int32(String(range.prefix { $0.isNumber })),
               let ours = readLink("/proc/self/ns/mnt"), let theirs = readLink("/proc/\(pid)/ns/mnt") {
                inWindow = ours == theirs
            }
            return mode.map { .running($0, windowOpen: inWindow) } ?? .notAnswering("its status names no mode")
        case .failure(let failure):
            return failure.notRunning ? .notRunning : .notAnswering(failure.why)
        }
    }

    struct RequestFailure: Error { var why: String; var notRunning: Bool }

    static func request(_ request: ControlRequest, settings: AptHookSettings) -> Result<ControlReply, RequestFailure> {
        let fd: FileDescriptor
        do { fd = try connectUnix(settings.socketPath, timeoutSeconds: settings.daemonTimeoutSeconds) } catch {
            let absent = error == .noSuchFile || error == Errno(rawValue: ECONNREFUSED)
            return .failure(RequestFailure(why: "cannot reach it at \(settings.socketPath): \(error)", notRunning: absent))
        }
        defer { fd.close() }
        signal(SIGPIPE, SIG_IGN)
        do {
            try fd.writeAll(Array((request.line + "\n").utf8))
            return .success(ControlReply(wire: String(decoding: try fd.readAll(limit: 1 << 20), as: UTF8.self)))
        } catch {
            return .failure(RequestFailure(why: error == .wouldBlock ? "no answer within \(settings.daemonTimeoutSeconds) s" : "\(error)", notRunning: false))
        }
    }

    enum DaemonAnswer { case tookIt, notRunning, failed(String) }

    /// Tells the daemon to take the overlay in, and checks that it trusts every package just derived (a daemon
    /// enforcing a last-known-good policy without these apt-source lines would not). Never waits longer than the
    /// bound. What a failure means is the caller's: before dpkg it stops apt in enforce mode; after, it is reported.
    static func notifyDaemon(settings: AptHookSettings, expecting derived: [String], outcome: inout Outcome) -> DaemonAnswer {
        switch request(.reloadOverlays, settings: settings) {
        case .failure(let failure) where failure.notRunning:
            return .notRunning
        case .failure(let failure):
            return .failed(failure.why)
        case .success(let reply) where !reply.ok:
            return .failed("it refused the overlay: \(reply.head)")
        case .success(let reply):
            outcome.say("daemon: \(reply.head)")
            let notTrusted = Set(reply.head.suffix(after: "not trusted: ")?.split(separator: " ").map(String.init) ?? [])
            let missing = derived.filter { notTrusted.contains($0) || notTrusted.contains("…") }
            return missing.isEmpty ? .tookIt : .failed("the policy it enforces does not trust \(missing.prefix(8).joined(separator: " "))")
        }
    }

    private static func daemonDidNotAnswer(_ why: String, mode: Mode, outcome: inout Outcome) {
        if mode == .enforce {
            outcome.proceed = false
            outcome.say("the daemon did not take the overlay in (\(why)); stopping apt before dpkg runs (enforce mode would deny the new programs)")
        } else {
            outcome.say("the daemon did not take the overlay in (\(why)); going on (\(mode.rawValue) mode)")
        }
    }
}

extension String {
    /// What follows the first occurrence of `marker`, or nil.
    func suffix(after marker: String) -> Substring? {
        let m = Array(marker.utf8), u = Array(utf8)
        guard u.count >= m.count else { return nil }
        for i in 0...(u.count - m.count) where u[i..<(i + m.count)].elementsEqual(m) {
            return Substring(String(decoding: u[(i + m.count)...], as: UTF8.self))
        }
        return nil
    }
}
