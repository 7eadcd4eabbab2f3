import AppctlCore
import AppctlKernel
import AppctlPackages
#if canImport(Glibc)
import Glibc
#endif

/// The control plane: what `appctl status`, `enforce`, `monitor`, `learn-mode` and `reload` reach through the
/// socket, and the Prometheus file.
extension Daemon: DaemonControl {
    @discardableResult
    public func reload(reason: String) -> Result<PolicyHeader, PolicyRefusal> {
        guard let path = configuration.policyDirectory ?? configuration.policyPath, let key = configuration.publicKeyPath else {
            return .failure(PolicyRefusal("no policy or key configured"))
        }
        let result = configuration.policyDirectory != nil
            ? policy.applyLayers(directory: path, keyPath: key, allowRollback: configuration.allowRollback)
            : policy.apply(path: path, keyPath: key, allowRollback: configuration.allowRollback)
        if case .success = result {
            // Also what makes a new candidate count from scratch: every program is decided (and evaluated) again.
            kernelCache.flush(reason: reason)
            releaseFreeHeapMemory()   // the previous policy's arrays and the reader's buffers
            policyApplied()
        }
        switch result {
        case .success(let header):
            let layers = policy.snapshot.layers
            let snapshot = policy.snapshot
            Self.log("appctl: \(reason): applied policy serial \(header.serial!) (\(snapshot.totalAllowCount) allow, \(header.denyCount) deny)"
                + (layers.count > 1 ? "; layers " + layers.map { "\($0.name) \($0.header.serial!) (\($0.header.allowCount) allow)" }.joined(separator: ", ") : "")
                + (snapshot.skippedLayers.isEmpty ? "" : "; left out: " + snapshot.skippedLayers.joined(separator: ", ")))
        case .failure(let refusal): Self.log("appctl: \(reason): policy NOT applied, keeping the current one: \(refusal)")
        }
        return result
    }

    /// Reads every overlay layer from the state directory and swaps them in. Entries only added leave every cached
    /// verdict standing (adding allows cannot make a cached allow wrong, and digests, not decisions, are cached);
    /// a retired entry flushes the kernel-side cache, which may hold an allow for it. A file that cannot be read or
    /// trusted keeps the overlays in force.
    public func reloadOverlays(reason: String) -> Result<String, PolicyRefusal> {
        let overlays: [Overlay]
        do { overlays = try OverlayStore(stateDirectory: configuration.stateDirectory).readAll() } catch {
            Self.log("appctl: \(reason): overlays NOT taken in, keeping the current ones: \(error)")
            return .failure(PolicyRefusal(error.description))
        }
        let (table, revoked) = policy.setOverlays(overlays)
        if revoked { kernelCache.flush(reason: "overlay entries retired") }
        // Interpreters are hashed again only when the overlays' interpreters changed (hashing every configured
        // interpreter costs ~150 ms with node; a 10k-entry reload took 196 ms instead of 27 with it each time).
        if facts.rebuildInterpretersIfOverlayChanged(declared: policy.declaredInterpreters, overlayPrograms: table.programs),
           !policy.profileState.table.isEmpty, !revoked {
            // A program newly recognised as an interpreter may hold an exec verdict in the kernel that profiles would
            // now keep there no longer (its inline code must be judged).
            kernelCache.flush(reason: "interpreters changed under execution profiles")
        }
        // The apt hook reads the labels after "not trusted: " (at most 64; "…" when there are more).
        let untrusted = table.untrustedPackages
        let summary = "mode \(policy.mode.rawValue); overlays: \(table.trustedPackages) packages trusted (\(table.digestCount) digests)"
            + (revoked ? "; entries retired, kernel cache flushed" : "")
            + (untrusted.isEmpty ? "" : "; \(untrusted.count) not trusted by the policy's apt-source lines; not trusted: "
                + untrusted.prefix(64).joined(separator: " ") + (untrusted.count > 64 ? " …" : ""))
        // Nothing to say at a start without overlays (stderr carries what an admin must read).
        if !(reason == "start-up" && overlays.allSatisfy({ $0.packages.isEmpty && $0.windows.isEmpty })) { Self.log("appctl: \(reason): \(summary)") }
        return .success(summary)
    }

    public func maintenanceStart(seconds: UInt64, pid: Int32, paths: [String], reason: String) -> Result<String, PolicyRefusal> {
        maintenance.open(seconds: seconds, pid: pid, paths: paths, reason: reason)
    }

    public func maintenanceEnd(id: UInt64?) -> Result<String, PolicyRefusal> { maintenance.close(because: "ended by appctl maintenance end", id: id) }

    public func maintenanceStatus() -> String { maintenance.statusLine }

    /// At start-up, before the first event: overlays left by a transaction that never finished are reconciled
    /// with dpkg's database first (unless dpkg is running now), then loaded. A failure is logged; the daemon
    /// starts with the signed policy alone.
    func loadInitialOverlays() {
        let store = OverlayStore(stateDirectory: configuration.stateDirectory)
        if (try? linkStatus(store.path(of: "apt"))) != nil, !DpkgStatus.isBusy(), !DpkgStatus.isAptBusy() {
            do {
                let status = try DpkgStatus()
                if let retired = try store.withLock(wait: false, { () throws(OverlayError) in try store.retire(layer: "apt", installed: status) }),
                   !retired.isEmpty {
                    Self.log("appctl: start-up: retired \(retired.count) package versions no longer installed from overlay:apt")
                }
            } catch {
                Self.log("appctl: start-up: cannot reconcile overlay:apt with dpkg's database: \(error)")
            }
        }
        // A window that was open when the daemon stopped is closed now: what it wrote afterwards is not its.
        if (try? linkStatus(store.path(of: "maintenance"))) != nil {
            do {
                _ = try store.withLock(wait: false) { () throws(OverlayError) in
                    var overlay = try store.read(layer: "maintenance")
                    let now = Timestamp.now
                    guard overlay.windows.contains(where: { $0.closed > now }) else { return }
                    for i in overlay.windows.indices where overlay.windows[i].closed > now { overlay.windows[i].closed = now }
                    try store.write(overlay)
                    Self.log("appctl: start-up: a maintenance window open when the daemon stopped is closed as of now")
                }
            } catch {
                Self.log("appctl: start-up: cannot close the maintenance windows left open: \(error)")
            }
        }
        _ = reloadOverlays(reason: "start-up")
    }

    /// After any policy is applied (a reload, or a last-known-good copy at start): interpreters may have been
    /// upgraded, and the policy may declare others (read here, off the event thread).
    func policyApplied() {
        facts.rebuildInterpreters(declared: policy.declaredInterpreters, overlayPrograms: policy.overlayPrograms)
        // At start-up the pass begins once the daemon is ready (`run`); after a reload, at once.
        if configuration.prehashListed, ready.load(ordering: .relaxed), let path = policy.snapshot.path {
            listedPrehash.start(policyPath: path)
        }
    }

    public func setMode(_ mode: Mode) -> Result<Mode, ControlReply> {
        if mode == .enforce && policy.snapshot.policy == nil {
            return .failure(.error("no valid policy is loaded; refusing to enforce (fix the policy, then reload)"))
        }
        policy.setMode(mode)
        kernelCache.flush(reason: "mode \(mode.rawValue)")
        hardening.apply(for: mode)
        Self.log("appctl: mode switched to \(mode.rawValue) over the control socket")
        serviceNotifier.notify("STATUS=enforcing \(mode.rawValue)")
        return .success(mode)
    }

    public func setProfileLearning(_ on: Bool) -> String {
        policy.setProfileLearning(on)
        // Execs the kernel answers would never be seen: while learning, every exec must reach the daemon.
        if on { kernelCache.flush(reason: "profile learning on") }
        Self.log("appctl: profile learning \(on ? "on" : "off") over the control socket")
        let mode = policy.mode
        return "profile learning \(on ? "on" : "off")" + (mode == .learn ? " (learn mode learns profiles whatever this says)"
            : mode == .enforce && on ? " (takes effect in monitor mode; enforce mode never learns)" : "")
    }

    public func forbiddenCallSelfTest(_ call: String) -> String? {
        guard configuration.debugSelftest else { return nil }
        Self.log("appctl: self-test: calling \(call), which confinement forbids")
        if call == "socket" {
            _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        } else {
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
            _ = execve("/bin/true", argv, argv)
        }
        return "self-test call returned: not confined"
    }

    public func statusReport() -> StatusReport {
        marker.drainExecCounter(into: statistics)   // up to date for this answer
        statistics.set(.requestsDroppedUnanswered, PermissionRequest.droppedUnanswered.load(ordering: .relaxed))
        let s = policy.snapshot
        let overlays = policy.overlayTable
        let counted = marker.execCounter != nil
        let hits = statistics[.cacheHits], misses = statistics[.cacheMisses]
        var fields: [(name: String, value: StatusReport.Value)] = [
            ("ready", .bool(ready.load(ordering: .relaxed))),
            ("confined", .bool(confined.load(ordering: .relaxed))),
            ("open_events", .bool(configuration.openEvents)),
            ("hardening", .strings(hardening.active)),
            ("hardening_failures", .strings(hardening.failures)),
            ("mode", .string(s.mode.rawValue)),
            ("pid", .int(Int(ownPID))),
            ("uptime_seconds", .number(monotonicSeconds() - startedAt)),
            ("policy_source", .string(s.source.name)),
            ("policy_path", .string(s.path)),
            ("policy_serial", s.policy?.serial.map { .int(Int($0)) } ?? .string(nil)),
            ("policy_key_id", .string(s.policy?.keyID)),
            ("policy_expires", .string(s.policy?.expires?.description)),
            ("policy_expired", .bool(s.policy?.expires.map { $0 <= .now } ?? false)),
            ("policy_allow_entries", .int(s.totalAllowCount)),
            ("policy_deny_entries", .int(s.denyCount)),
            ("policy_layers", .strings(s.layers.map { "\($0.name) \($0.header.serial!)" + ($0.isSupplement ? " (supplement, \($0.header.allowCount) allow)" : " (base)") })),
            ("policy_layers_skipped", .strings(s.skippedLayers)),
            ("candidate_layers", .strings(s.candidateLayers.map { "\($0.name) \($0.header.serial!)" })),
            ("candidate_error", .string(s.candidateError)),
            ("candidate_would_deny_programs", .int(s.candidateWouldDenyPrograms)),
        ]
        // What `appctl sync` recorded of its last pass (the daemon itself never talks to the network).
        let sync = syncStatus()
        let now = Timestamp.now.secondsSinceEpoch
        fields += [
            ("sync_last_result", .string(sync["result"])),
            ("sync_last_reason", .string(sync["reason"])),
            ("sync_last_seconds_ago", sync["time"].flatMap { Int64($0) }.map { .int(Int(now - $0)) } ?? .string(nil)),
            ("sync_ring", .string(sync["ring"])),
            ("sync_timestamp_version", sync["timestamp_version"].flatMap { Int($0) }.map { .int($0) } ?? .string(nil)),
            ("sync_timestamp_age_seconds", sync["timestamp_issued"].flatMap { Int64($0) }.map { .int(Int(now - $0)) } ?? .string(nil)),
            ("sync_timestamp_expires_in_seconds", sync["timestamp_expires"].flatMap { Int64($0) }.map { .int(Int($0 - now)) } ?? .string(nil)),
            ("drift", .string(driftSummary())),
            ("last_policy_error", .string(s.lastError)),
            ("learned_files", .int(learned.count)),
            ("profile_subjects", .int(s.profileSubjects)),
            ("profile_users_unresolved", .strings(s.unresolvedProfileUsers)),
            ("profile_learning", .bool(s.learningProfiles)),
            ("profile_denials_by_subject", .strings(statistics.profileDenials.map { "\($0.subject) \($0.count)" })),
            ("policy_apt_sources", .strings(s.policy?.aptSources.map(\.description) ?? [])),
            ("overlay_packages_trusted", .int(overlays.trustedPackages)),
            ("overlay_digests", .int(overlays.digestCount)),
            ("overlay_packages_not_trusted", .strings(overlays.untrustedPackages)),
            ("overlay_window_digests", .int(overlays.windowDigests)),
            ("maintenance_window", .string(maintenance.isOpen ? maintenance.statusLine : nil)),
            ("maintenance_window_pid", maintenance.windowPID.map { .int(Int($0)) } ?? .string(nil)),
            ("kernel_cache", .bool(kernelCache.enabled)),
        ]
        fields += StatusReport.counterFields(statistics, execsCounted: counted)
        fields += [
            ("cache_hit_rate", .number(hits + misses == 0 ? 0 : Double(hits) / Double(hits + misses))),
            // Events the kernel answers from its marks cannot be counted by the permission group (fanotify keeps no
            // counter, and counting them in userspace would need an event each): the exec counter's group sees them.
            ("execs_answered_in_kernel", counted ? .int(max(0, statistics[.execsSeen] - statistics[.execsAllowedByDaemon])) : .unknownCount),
            ("execs_not_counted_on", .strings(marker.uncountedMountPoints)),
            ("latency_p50_us", .number(statistics.latencyQuantile(0.5))),
            ("latency_p99_us", .number(statistics.latencyQuantile(0.99))),
            ("events_queued", .int(eventLog.queuedCount)),
            ("marked_filesystems", .strings(marker.markedMountPoints)),
            ("mark_failures", .strings(marker.markFailures)),
            ("marked_in_other_namespaces", .strings(marker.markedInOtherNamespaces)),
        ]
        return StatusReport(ready: ready.load(ordering: .relaxed), fields: fields)
    }

    /// What the last `appctl drift` counted (`<state-dir>/drift-summary`), as `unknown 3, modified_packaged 0, …, counted 7200 s ago`.
    func driftSummary() -> String? {
        var fields = readKeyValueFile(configuration.stateDirectory + "/drift-summary")
        guard let time = fields.removeValue(forKey: "time").flatMap({ Int64($0) }) else { return nil }
        let order = ["unknown", "modified_packaged", "overlay_only", "superseded", "absent"]
        return order.compactMap { name in fields[name].map { "\(name) \($0)" } }.joined(separator: ", ")
            + ", counted \(Timestamp.now.secondsSinceEpoch - time) s ago"
    }

    /// A label value as the Prometheus text format wants it: backslash, quote and newline escaped.
    func prometheusLabel(_ value: String) -> String {
        value.map { $0 == "\\" ? "\\\\" : $0 == "\"" ? "\\\"" : $0 == "\n" ? "\\n" : String($0) }.joined()
    }

    /// `<state-dir>/sync/status`: `key value` lines written by `appctl sync` after each pass.
    func syncStatus() -> [String: String] { readKeyValueFile(configuration.stateDirectory + "/sync/status") }


    /// The Prometheus text exposition format, for node_exporter's textfile collector.
    public func metricsText() -> String {
        let s = policy.snapshot
        return StatusReport.prometheusText(statistics, execsCounted: marker.execCounter != nil, gauges: [
            ("decision_latency_seconds", "Decision latency of daemon-answered events.", [
                ("{quantile=\"0.5\"}", String((statistics.latencyQuantile(0.5) ?? 0) / 1e6)),
                ("{quantile=\"0.99\"}", String((statistics.latencyQuantile(0.99) ?? 0) / 1e6)),
            ]),
            ("policy_serial", "Serial of the applied policy (0: none).", [("", String(s.policy?.serial ?? 0))]),
            ("profile_denials", "Execs an execution profile refused (would-deny outside enforce mode), by subject.",
             statistics.profileDenials.map { ("{subject=\"\(prometheusLabel($0.subject))\"}", String($0.count)) }),
            ("policy_layer_serial", "Serial of each layer in force.", s.layers.map { ("{layer=\"\($0.name)\"}", String($0.header.serial!)) }),
            ("candidate_would_deny_programs", "Distinct programs the candidate policy would deny that the policy in force allows.",
             [("", String(s.candidateWouldDenyPrograms))]),
            ("overlay_digests", "Digests allowed by local overlays the signed policy's apt-source lines trust.", [("", String(policy.overlayTable.digestCount))]),
            ("policy_last_known_good", "1 when the configured policy was refused at start and a policy applied before is enforced.",
             [("", s.source == .configured ? "0" : "1")]),
            ("mode", "1 for the current mode.", Mode.allCases.map { ("{mode=\"\($0.rawValue)\"}", $0 == s.mode ? "1" : "0") }),
            ("mark_failures", "Filesystems that could not be marked (not covered; see appctl status).", [("", String(marker.markFailures.count))]),
            ("ready", "1 once start-up is done and every filesystem that could be marked is.", [("", ready.load(ordering: .relaxed) ? "1" : "0")]),
        ])
    }

    /// Written whole and atomically, so the collector never reads half a file.
    func writeMetrics(to path: String) {
        do { try AtomicFileWriter.write(Array(metricsText().utf8), to: path, permissions: 0o644) } catch {
            Self.log("appctl: cannot write metrics to \(path): \(error)")
        }
    }
}

/// The main loop's periodic work, as a table: each job with its period, run when due.
final class PeriodicJobs {
    enum Job: CaseIterable { case drainExecCounter, namespaceScan, metrics, expiryCheck, learnFlush }

    private let daemon: Daemon
    private var due: [Job: Double] = [:]
    private var expiryReported = false
    private var lapsedHandled: Set<String> = []

    init(daemon: Daemon) {
        self.daemon = daemon
        let now = monotonicSeconds()
        for job in Job.allCases { due[job] = now }
        due[.namespaceScan] = now + Daemon.namespaceScanSeconds   // the first scan ran during start-up
        due[.learnFlush] = now + Double(daemon.configuration.learnFlushSeconds)
    }

    private func period(_ job: Job) -> Double? {
        switch job {
        case .drainExecCounter: return 0   // every turn of the loop (about once a second)
        case .namespaceScan: return Daemon.namespaceScanSeconds
        case .metrics: return daemon.configuration.metricsFile == nil ? nil : 15
        case .expiryCheck: return 60
        case .learnFlush: return Double(daemon.configuration.learnFlushSeconds)
        }
    }

    func runSoon(_ job: Job) { due[job] = 0 }

    func runDue() {
        for job in Job.allCases {
            guard let period = period(job), let when = due[job], monotonicSeconds() >= when else { continue }
            run(job)
            due[job] = monotonicSeconds() + period
        }
    }

    private func run(_ job: Job) {
        switch job {
        case .drainExecCounter: daemon.marker.drainExecCounter(into: daemon.statistics)
        case .namespaceScan: daemon.marker.updateOtherNamespaces()
        case .metrics: if let file = daemon.configuration.metricsFile { daemon.writeMetrics(to: file) }
        case .expiryCheck:
            // Entries of a maintenance window expire (the policy's keep= after it closed): the table is rebuilt
            // without them, which flushes the kernel-side cache that may hold their allows.
            if let expiry = daemon.policy.overlayTable.earliestExpiry, expiry <= .now {
                _ = daemon.reloadOverlays(reason: "maintenance entries expired")
            }
            // A supplement past its expiry loses its entries (its delegation's max-valid is the point of expiry there):
            // the set is read again, which leaves it out. The base is never dropped this way.
            let lapsed = Set(daemon.policy.snapshot.layers.filter { $0.isSupplement && ($0.header.expires.map { $0 <= .now } ?? false) }
                .map { "\($0.name) \($0.header.serial!)" })
            if !lapsed.isSubset(of: lapsedHandled) {
                lapsedHandled.formUnion(lapsed)   // once each: a reload refused for another reason is not retried every period
                _ = daemon.reload(reason: "supplement expired: \(lapsed.sorted().joined(separator: ", "))")
            }
            if let expires = daemon.policy.snapshot.policy?.expires, expires <= .now, !expiryReported {
                expiryReported = true
                // Keep enforcing it: dropping to no policy would open the machine. Say so, loudly.
                Daemon.log("appctl: WARNING: the policy in force expired at \(expires); still enforcing it — sign and reload a new one")
            }
        case .learnFlush: daemon.flushLearned()
        }
    }
}
