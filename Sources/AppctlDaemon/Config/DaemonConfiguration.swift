import AppctlCore
import AppctlKernel

/// Everything the daemon is told: the config file's `key = value` lines, overridden by flags.
public struct DaemonConfiguration: Sendable, Equatable {
    public static let defaultPath = "/etc/appctl/appctl.conf"

    public var mode: Mode = .monitor
    public var policyPath: String? = "/etc/appctl/policy.txt"
    /// A policy directory (a base and its supplements, `PolicyLayers`); when set, `policyPath` is not used.
    public var policyDirectory: String?
    /// `appctl sync`'s settings (the daemon reads none of them): where bundles come from, and the timestamp key.
    public var syncFrom: String?
    public var timestampKeyPath = "/etc/appctl/timestamp.pub"
    public var publicKeyPath: String? = "/etc/appctl/signing.pub"
    /// Mount points whose filesystems (and filesystems mounted below them later) are marked.
    /// Empty: every local filesystem.
    public var paths: [String] = []
    public var eventsPath = "/var/log/appctl/events.jsonl"
    public var socketPath = "/run/appctl/appctl.sock"
    public var stateDirectory = "/var/lib/appctl"
    public var learnOutput = "/var/lib/appctl/learned.txt"
    /// Filesystem types never marked, on top of the pseudo filesystems.
    public var excludedFilesystemTypes: [String] = []
    /// Mount points never marked (and nothing below them).
    public var excludedMountPoints: [String] = []
    /// Also write an event per allowed exec (verbose; off by default).
    public var logAllows = false
    public var allowRollback = false
    public var hashThreads = 2
    /// Learn execution profiles in monitor mode too (`learn-profiles = yes`); learn mode always does.
    public var learnProfiles = false
    /// How often learn mode rewrites its fragment, in seconds.
    public var learnFlushSeconds = 30
    /// Also watch opens (`FAN_OPEN_PERM`): closes the loader, library and interpreter bypasses.
    public var openEvents = true
    /// Programs whose opens of scripts count as running them.
    public var interpreters: [String] = InterpreterRule.defaultCandidates
    /// In enforce mode, set vm.memfd_noexec=2 (executable memfds refused machine-wide), restored on exit.
    public var memfdNoexec = true
    /// In enforce mode, set user.max_user_namespaces=0 (restored on exit): a filesystem mounted inside a
    /// new user namespace is a superblock the daemon never learns about.
    public var usernsRestrict = true
    /// Confine the daemon with seccomp, no_new_privs and a reduced capability set once its marks exist.
    public var confine = true
    /// Prometheus text file (node_exporter textfile-collector convention), rewritten every 15 s; nil: off.
    public var metricsFile: String? = nil
    /// Hash newly written executable content in the background (FAN_CLOSE_WRITE), so its first exec is a cache hit.
    public var prehash = true
    /// After start-up and each reload, hash the policy's listed files of 1 MiB and more in the background (largest
    /// first, idle priority), so that their first exec is answered from the cache.
    public var prehashListed = true
    /// Kernel-side verdict cache: ignore marks on allowed files that only root can write.
    public var kernelCache = true
    /// Count every exec with a second, notification-only fanotify group, so that `status` can tell the execs
    /// the kernel answered from its cache from those the daemon answered (about 4 µs per exec; BENCHMARKS.md).
    public var countExecs = true
    /// Let scripts, libraries and loader-mapped programs that someone other than root can change be decided by
    /// their digest anyway (off by default). The risk: such content can change after the verdict (a shell reads
    /// its script as it runs; the loader's private mappings show later writes to pages not yet copied), so a
    /// user who owns a copy of an allowed script or library can run code of their choice.
    public var allowMutableCode = false
    /// Root-only-writable data files that others can read are cached in the kernel only under these paths (a
    /// trailing `/` marks a directory): root's own content that no user's input reaches. The risk for anything
    /// listed: once anyone read such a file, an interpreter handed it as its program is not asked (a root-owned log
    /// with attacker-chosen lines would become a script). `/` caches every such file.
    public var kernelCacheDataUnder = RootDataPaths.defaults
    /// Verdicts for programs someone other than root can write, kept while a read lease proves nobody can change
    /// them (their execs then need no hash): at most this many, each a descriptor and a lease; 0 keeps none.
    public var leasedVerdicts = 512
    /// Test hook: the control socket accepts `debug-forbidden-syscall` (hidden flag, tests only).
    public var debugSelftest = false

    public init() {}

    public struct ParseError: Error, CustomStringConvertible {
        public var file: String
        public var line: Int
        public var message: String
        public var description: String { "\(file):\(line): \(message)" }
    }

    /// Reads a config file: `key = value` per line, `#` comments, `path` and the exclude keys repeatable.
    public mutating func apply(file: String, text: String) throws(ParseError) {
        var lineNumber = 0
        var configuredInterpreters = false   // the first `interpreter` line replaces the default list
        var configuredDataPaths = false      // likewise the first `kernel-cache-data-under` line
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let trimmed = line.trimmingSpaces()
            if trimmed.isEmpty { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw ParseError(file: file, line: lineNumber, message: "expected 'key = value'")
            }
            let key = String(trimmed[..<eq]).trimmingSpaces()
            let value = String(trimmed[trimmed.index(after: eq)...]).trimmingSpaces()
            func bool() throws(ParseError) -> Bool {
                switch value { case "yes", "true", "on", "1": return true
                case "no", "false", "off", "0": return false
                default: throw ParseError(file: file, line: lineNumber, message: "\(key) must be yes or no") }
            }
            switch key {
            case "mode":
                guard let m = Mode(rawValue: value) else { throw ParseError(file: file, line: lineNumber, message: "mode must be one of \(Mode.choices)") }
                mode = m
            case "policy": policyPath = value.isEmpty ? nil : value
            case "policy-dir": policyDirectory = value.isEmpty ? nil : value
            case "sync-from": syncFrom = value.isEmpty ? nil : value
            case "timestamp-key": timestampKeyPath = value
            case "key": publicKeyPath = value.isEmpty ? nil : value
            case "path": paths.append(value)
            case "events": eventsPath = value
            case "socket": socketPath = value
            case "state-dir": stateDirectory = value
            case "learn-out": learnOutput = value
            case "learn-profiles":
                guard value == "yes" || value == "no" else { throw ParseError(file: file, line: lineNumber, message: "learn-profiles must be yes or no") }
                learnProfiles = value == "yes"
            case "exclude-fs-type": excludedFilesystemTypes.append(value)
            case "exclude-mount": excludedMountPoints.append(value)
            case "log-allows": logAllows = try bool()
            case "hash-threads":
                guard let n = Int(value), (1...64).contains(n) else { throw ParseError(file: file, line: lineNumber, message: "hash-threads must be 1 to 64") }
                hashThreads = n
            case "open-events": openEvents = try bool()
            case "memfd-noexec": memfdNoexec = try bool()
            case "userns-restrict": usernsRestrict = try bool()
            case "confine": confine = try bool()
            case "kernel-cache": kernelCache = try bool()
            case "count-execs": countExecs = try bool()
            case "prehash": prehash = try bool()
            case "allow-mutable-code": allowMutableCode = try bool()
            case "kernel-cache-data-under":
                if !configuredDataPaths { kernelCacheDataUnder = []; configuredDataPaths = true }
                guard value == "none" || value.hasPrefix("/") else {
                    throw ParseError(file: file, line: lineNumber, message: "kernel-cache-data-under takes an absolute path or 'none'")
                }
                if value != "none" { kernelCacheDataUnder.append(value) }
            case "leased-verdicts":
                guard let n = Int(value), (0...4096).contains(n) else { throw ParseError(file: file, line: lineNumber, message: "leased-verdicts must be 0 to 4096") }
                leasedVerdicts = n
            case "prehash-listed": prehashListed = try bool()
            case "metrics-file": metricsFile = value.isEmpty ? nil : value
            case "interpreter":
                if !configuredInterpreters { interpreters = []; configuredInterpreters = true }
                interpreters.append(value)
            case "learn-flush-seconds":
                guard let n = Int(value), n >= 1 else { throw ParseError(file: file, line: lineNumber, message: "learn-flush-seconds must be a positive number") }
                learnFlushSeconds = n
            default:
                throw ParseError(file: file, line: lineNumber, message: "unknown setting '\(key)'")
            }
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}

/// JSON string literal with escaping (events, status).
public func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
