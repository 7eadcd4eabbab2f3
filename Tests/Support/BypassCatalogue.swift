import AppctlKernel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The bypass techniques of `tools/bypass/techniques.sh`, the one catalogue `tools/bypass-suite` runs too,
/// driven one at a time through `tools/bypass/technique`. The shell owns the attacks, the payloads and the
/// judging (by the payload's evidence, never by exit status); this side only lists them, prepares trees
/// and reads verdicts, so a technique is written once, in one language.
public struct BypassCatalogue: Sendable {
    /// One row of the catalogue.
    public struct Technique: Sendable, CustomStringConvertible {
        public let id: String
        /// False for the further probes, which the suite's tables do not score.
        public let scored: Bool
        /// As the catalogue writes it: `runs`, `blocked`, `not run` or `runs (documented gap)`.
        public let expected: String
        /// What the row needs beyond a tree and an enforcing daemon: `-` (nothing), or `service`.
        public let needs: String
        public let title: String

        /// The row runs in the profiled service (`ServiceGroup`), and the daemon must hold the execution profile
        /// that service's own work (`runServiceWorkload`) teaches a daemon in learn mode.
        public var runsInProfiledService: Bool { needs == "service" }

        /// Allowed code: an enforcing daemon must let it run.
        public var mustRunWhenEnforced: Bool { expected == "runs" }
        /// An attack: an enforcing daemon must keep its payload from running.
        public var mustNotRunWhenEnforced: Bool { expected == "blocked" || expected == "not run" }
        public var description: String { "\(id) \(title)" }
    }

    /// What one attempt showed.
    public struct Outcome: Sendable, CustomStringConvertible {
        /// The payload's evidence appeared: its code ran.
        public let ran: Bool
        /// The attack could not be set up (a file change that did not happen): the row proves nothing.
        public let preparationFailed: Bool
        /// Exit status and the last line of stderr.
        public let detail: String
        public var description: String { "\(ran ? "ran" : "did not run")\(preparationFailed ? ", PREPARATION FAILED" : "") (\(detail))" }
    }

    /// `tools/bypass`, found from this source file: the tests run from the package's checkout.
    public static let directory: String = {
        let support = (#filePath as NSString).deletingLastPathComponent   // Tests/Support
        return ((support as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent + "/tools/bypass"
    }()
    static var command: String { directory + "/technique" }

    public let work: String
    public let filesystem: String
    /// The profiled service's cgroup (`ServiceGroup.path`), for the rows that run in it.
    public let serviceGroup: String?

    /// `work` is a scratch directory off the enforced filesystem (payloads and the marker go there, built
    /// before the daemon starts); `filesystem` is the mount point the daemon enforces on; `serviceGroup` the
    /// profiled service's cgroup (without it, the rows that run there fail their preparation).
    public init(work: String, filesystem: String, serviceGroup: String? = nil) throws {
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        chmod(work, 0o755)   // the attacker (nobody) reaches the marker directory through it
        self.work = work
        self.filesystem = filesystem
        self.serviceGroup = serviceGroup
    }

    /// The profiled service of the catalogue's `service` rows: a cgroup v2 group of the test's own, named like a
    /// systemd unit (`<cgroup2 mount>/appctl-bypass-<id>/web.service`), found under the host's cgroup2 mount (never
    /// assumed). `remove()` kills by PID whatever still runs in it (only the catalogue's attempts can) and removes both.
    public final class ServiceGroup: @unchecked Sendable {
        public let path: String
        let parent: String

        public init() throws {
            let r = try AppctlTestSupport.run("/usr/bin/findmnt", ["-t", "cgroup2", "-n", "-o", "TARGET"])
            guard r.status == 0, let mount = r.stdout.split(separator: "\n").first.map(String.init) else {
                throw HarnessError("the profiled-service rows need a cgroup v2 mount (findmnt -t cgroup2 found none): \(r.stderr)")
            }
            parent = mount + "/appctl-bypass-\(UUID().uuidString.prefix(8))"
            path = parent + "/web.service"
            guard mkdir(parent, 0o755) == 0 else { throw HarnessError("mkdir \(parent): \(Errno.current)") }
            guard mkdir(path, 0o755) == 0 else {
                let error = Errno.current
                rmdir(parent)
                throw HarnessError("mkdir \(path): \(error)")
            }
        }

        public func remove() {
            for group in [path, parent] {
                for _ in 0..<50 {
                    if rmdir(group) == 0 || errno == ENOENT { break }
                    let pids = (try? String(contentsOfFile: group + "/cgroup.procs", encoding: .utf8)) ?? ""
                    for pid in pids.split(separator: "\n").compactMap({ pid_t($0) }) { kill(pid, SIGKILL) }
                    usleep(100_000)
                }
            }
        }
    }

    /// Every row, in the catalogue's order.
    public static func techniques() throws -> [Technique] {
        let r = try AppctlTestSupport.run("/usr/bin/bash", [command, "list"], environment: hostEnvironment)
        guard r.status == 0 else { throw HarnessError("technique list: \(r.stderr)") }
        return try r.stdout.split(separator: "\n").map { line in
            // ID, scored|probe, EXPECTED, NEEDS, TITLE (the title last: it is free text)
            let fields = line.split(separator: "\t", maxSplits: 4, omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 5 else { throw HarnessError("technique list: not 5 fields: \(line)") }
            return Technique(id: fields[0], scored: fields[1] == "scored", expected: fields[2], needs: fields[3], title: fields[4])
        }
    }

    /// Builds the payloads (once) and a fresh tree at `tree`; returns the files a policy is to allow.
    @discardableResult
    public func prepare(tree: String) throws -> [String] {
        let r = try AppctlTestSupport.run("/usr/bin/bash", [Self.command, "prepare", tree], environment: environment(label: "prepare"))
        guard r.status == 0 else { throw HarnessError("technique prepare: \(r.stderr)") }
        return r.stdout.split(separator: "\n").map(String.init)
    }

    /// Runs one technique in a prepared tree. `label` names what enforces (`baseline`, `appctl`): the
    /// transcript of every attempt goes to `work/transcript-<label>.txt`.
    public func run(_ technique: Technique, in tree: String, label: String) throws -> Outcome {
        try outcome(["run", tree, technique.id], label: label, what: "run \(technique.id)")
    }

    /// Runs the profiled service's own work in `serviceGroup` (what a daemon in learn mode learns its profile from).
    public func runServiceWorkload(in tree: String, label: String) throws -> Outcome {
        try outcome(["workload", tree], label: label, what: "workload")
    }

    private func outcome(_ arguments: [String], label: String, what: String) throws -> Outcome {
        let r = try AppctlTestSupport.run("/usr/bin/bash", [Self.command] + arguments, environment: environment(label: label))
        let fields = r.stdout.split(separator: "\n").last.map { $0.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false).map(String.init) } ?? []
        guard r.status == 0, fields.count == 3 else { throw HarnessError("technique \(what): \(r.stdout) \(r.stderr)") }
        return Outcome(ran: fields[0] == "ran", preparationFailed: fields[1] != "prepared", detail: fields[2])
    }

    public func transcript(label: String) -> String { work + "/transcript-\(label).txt" }

    /// Compiles the catalogue's payload library (`tools/bypass/payload.c`): loading it creates `marker`.
    public static func buildPayloadLibrary(marker: String, output: String) throws {
        let r = try AppctlTestSupport.run("/usr/bin/cc", ["-shared", "-fPIC", "-DMARKER=\"\(marker)\"", "-o", output, directory + "/payload.c"])
        guard r.status == 0 else { throw HarnessError("cc payload.c: \(r.stderr)") }
    }

    /// The host's own tools first: no pyenv shim or /usr/local copy stands in for the python3 the rows name.
    static let hostEnvironment = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"]

    func environment(label: String) -> [String: String] {
        Self.hostEnvironment.merging([
            "BYPASS_WORK": work, "BYPASS_FS": filesystem, "BYPASS_DAEMON": label, "BYPASS_TRANSCRIPT": transcript(label: label),
        ].merging(serviceGroup.map { ["BYPASS_CGROUP": $0] } ?? [:]) { $1 }) { $1 }
    }
}
