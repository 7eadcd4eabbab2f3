import AppctlCore
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// Hashes the files a `.deb` will install and its maintainer scripts, through a well-kept archive reader
/// (the `appctl-apt-hook` program: dpkg-deb's tar streams read by libarchive). Kept behind a protocol so that
/// the daemon and the main `appctl` binary never link the archive library.
public protocol DebContentHasher {
    /// Every executable regular file of the package's data (path as installed, e.g. `/usr/bin/jq`) and every
    /// maintainer script (path `/var/lib/dpkg/info/<package>.<script>`, where dpkg runs it from).
    func executableFiles(ofDeb path: String, package: String, architecture: String) throws(ChainFailure) -> [OverlayFile]
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

    /// The `apt-source` lines of the configured policy. Only the header is read here, without checking the
    /// signature: the daemon checks every overlay record against the policy it verified, so a forged header could
    /// only make the hook derive entries the daemon then ignores.
    public static func policyRules(_ path: String?) -> (rules: [AptSourceRule], problem: String?) {
        guard let path else { return ([], "no policy configured") }
        struct HeaderRead: Error {}
        var rules: [AptSourceRule]?
        do {
            _ = try PolicyReader(path: path).read(onHeader: { rules = $0.aptSources }, onAllow: { (_) throws(PolicyError) in
                throw PolicyError(.io, file: path, "header read")   // stop at the first entry: the header is all we need
            })
        } catch {
            if rules == nil { return ([], error.description) }
        }
        return (rules ?? [], nil)
    }

    /// `DPkg::Pre-Install-Pkgs`: before dpkg unpacks anything, verify every `.deb` of the transaction through the
    /// archive's chain, write the trusted packages' files to the `apt` overlay, and have the daemon take it in.
    public static func preInstall(_ request: AptHookRequest, settings: AptHookSettings, hasher: DebContentHasher,
                                  archive: AptArchive? = nil) -> Outcome {
        var outcome = Outcome()
        let unpacks = request.unpacks
        guard !unpacks.isEmpty else { return outcome }
        let (rules, problem) = policyRules(settings.policyPath)
        if let problem { outcome.say("cannot read the policy's apt sources (\(problem)); nothing derived") }
        guard !rules.isEmpty else {
            if problem == nil { outcome.say("the signed policy names no apt source: nothing derived from this transaction (\(unpacks.count) packages)") }
            return outcome
        }
        let archive = archive ?? AptArchive(listsDirectory: request.directory("Dir::State::lists", default: "/var/lib/apt/lists/"))
        let lookup = archive.lookUp(Set(unpacks.compactMap { a in a.newVersion.map { AptArchive.PackageKey(name: a.package, version: $0) } }))
        var derived: [OverlayPackage] = []
        var untrusted: [String] = []
        var gatePolicy: Result<LoadedPolicy, PolicyError>?
        for action in unpacks {
            guard let debPath = action.debPath, let version = action.newVersion else { continue }
            let label = "\(action.package)=\(version)"
            let deb: AptArchive.VerifiedDeb
            do { deb = try AptArchive.verifyDeb(path: debPath, package: action.package, version: version, in: lookup) } catch {
                outcome.say("NOT VERIFIED \(label): \(error.description); its files are trusted by nothing here")
                untrusted.append(label)
                continue
            }
            let release = deb.record.release
            guard let rule = rules.first(where: { $0.matches(signers: release.signers, origin: release.origin, suite: release.suite, codename: release.codename) }) else {
                outcome.say("not trusted \(label): \(release.path) is signed by \(release.signers.sorted().joined(separator: ",")), which no apt-source line of the policy names")
                untrusted.append(label)
                continue
            }
            switch rule.mode {
            case .report:
                outcome.say("report only \(label): verified (\(rule)), nothing derived")
            case .gate:
                // Derive nothing: the signed policy must carry the update already, or apt stops here.
                switch gateCheck(debPath: debPath, action: action, architecture: action.newArchitecture ?? deb.record.architecture,
                                 settings: settings, hasher: hasher, policy: &gatePolicy) {
                case nil: outcome.say("gate \(label): every executable file is already allowed by the signed policy")
                case let why?:
                    outcome.say("gate \(label): \(why); stopping apt before dpkg runs")
                    outcome.proceed = false
                }
            case .auto:
                let files: [OverlayFile]
                do { files = try hasher.executableFiles(ofDeb: debPath, package: action.package, architecture: action.newArchitecture ?? deb.record.architecture) } catch {
                    outcome.say("NOT TRUSTED \(label): \(error.description)")
                    untrusted.append(label)
                    continue
                }
                let signer = release.signers.sorted().first { rule.signer == $0 } ?? rule.signer
                derived.append(OverlayPackage(name: action.package, version: version, architecture: action.newArchitecture ?? deb.record.architecture,
                                              debDigest: deb.digest, signer: signer, origin: release.origin ?? "-", suite: release.suite ?? "-",
                                              codename: release.codename ?? "-", files: files))
            }
        }
        guard !derived.isEmpty, outcome.proceed else { return outcome }
        // Written (and synced) before the daemon is told: a daemon that restarts reads it from disk.
        do {
            _ = try settings.store.withLock(wait: true) { () throws(OverlayError) in
                var overlay = try settings.store.read(layer: "apt")
                let replaced = Set(derived.map { "\($0.name) \($0.version) \($0.architecture)" })
                overlay.packages.removeAll { replaced.contains("\($0.name) \($0.version) \($0.architecture)") }
                overlay.packages += derived
                try settings.store.write(overlay)
            }
        } catch {
            outcome.say("cannot write the apt overlay: \(error.description)")
            outcome.proceed = settings.configuredMode != .enforce
            if !outcome.proceed { outcome.say("stopping apt before dpkg runs: in enforce mode its programs would be denied") }
            return outcome
        }
        let files = derived.reduce(0) { $0 + $1.files.count }
        outcome.say("trusted \(derived.count) verified packages (\(files) executable files) in overlay:apt" + (untrusted.isEmpty ? "" : "; \(untrusted.count) not trusted"))
        notifyDaemon(settings: settings, outcome: &outcome)
        return outcome
    }

    /// Gate mode: nil when every executable file of the package is allowed by the verified signed policy, else why not.
    static func gateCheck(debPath: String, action: AptHookRequest.Action, architecture: String, settings: AptHookSettings,
                          hasher: DebContentHasher, policy: inout Result<LoadedPolicy, PolicyError>?) -> String? {
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
        let files: [OverlayFile]
        do { files = try hasher.executableFiles(ofDeb: debPath, package: action.package, architecture: architecture) } catch { return error.description }
        let missing = files.filter { loaded.lookup($0.digest) != .known }
        guard let first = missing.first else { return nil }
        return "\(missing.count) of its \(files.count) executable files are not in the signed policy (first: \(PathEscaping.unescapedString(first.escapedPath)) sha256 \(first.digest))"
    }

    /// `DPkg::Post-Invoke`: dpkg is done. Retire the overlay records of package versions that are no longer on
    /// the machine (upgraded or removed), and have the daemon drop them.
    public static func postInvoke(settings: AptHookSettings) -> Outcome {
        var outcome = Outcome()
        do {
            let status = try DpkgStatus(path: settings.dpkgStatusPath)
            let retired = try settings.store.withLock(wait: true) { () throws(OverlayError) in try settings.store.retire(layer: "apt", installed: status) } ?? []
            guard !retired.isEmpty else { return outcome }
            outcome.say("retired \(retired.count) package versions no longer installed from overlay:apt: \(retired.prefix(8).joined(separator: " "))\(retired.count > 8 ? " …" : "")")
        } catch {
            outcome.say("cannot reconcile the apt overlay with dpkg's database: \(error.description)")
            return outcome
        }
        notifyDaemon(settings: settings, outcome: &outcome)
        outcome.proceed = true   // after dpkg ran, failing would only hide the message
        return outcome
    }

    /// Tells the daemon to take the overlay in. Not running: fine (it reads overlays at start). Not answering in
    /// time: apt stops in enforce mode (the new programs would be denied half-way through the transaction) and
    /// goes on in monitor mode. Never waits longer than the bound.
    static func notifyDaemon(settings: AptHookSettings, outcome: inout Outcome) {
        let fd: FileDescriptor
        do { fd = try connectUnix(settings.socketPath, timeoutSeconds: settings.daemonTimeoutSeconds) } catch {
            if error == .noSuchFile || error == Errno(rawValue: ECONNREFUSED) {
                outcome.say("the daemon is not running; it loads the overlay when it starts")
                return
            }
            daemonDidNotAnswer("cannot reach it at \(settings.socketPath): \(error)", settings: settings, outcome: &outcome)
            return
        }
        defer { fd.close() }
        signal(SIGPIPE, SIG_IGN)
        do {
            try fd.writeAll(Array((ControlRequest.reloadOverlays.line + "\n").utf8))
            let reply = ControlReply(wire: String(decoding: try fd.readAll(limit: 1 << 16), as: UTF8.self))
            if reply.ok { outcome.say("daemon: \(reply.head)") } else {
                daemonDidNotAnswer("it refused the overlay: \(reply.head)", settings: settings, outcome: &outcome)
            }
        } catch {
            daemonDidNotAnswer(error == .wouldBlock ? "no answer within \(settings.daemonTimeoutSeconds) s" : "\(error)", settings: settings, outcome: &outcome)
        }
    }

    private static func daemonDidNotAnswer(_ why: String, settings: AptHookSettings, outcome: inout Outcome) {
        if settings.configuredMode == .enforce {
            outcome.proceed = false
            outcome.say("the daemon did not take the overlay in (\(why)); stopping apt before dpkg runs (enforce mode would deny the new programs)")
        } else {
            outcome.say("the daemon did not take the overlay in (\(why)); going on (\(settings.configuredMode.rawValue) mode)")
        }
    }
}
