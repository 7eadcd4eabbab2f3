import AppctlCore
import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why the daemon could not start. One line.
public struct DaemonStartError: Error, CustomStringConvertible {
    public var description: String
}

/// The enforcement daemon's composition root: builds the parts, runs the main loop as a table of periodic
/// jobs, shuts down. One permission event flows forward through the parts and never returns here:
///
///     EventReader → Triage → (HashPool →) Responder → EventLog
///
/// Threads: the event reader, the hash workers, the pre-hasher, the control server and the event log each have
/// their own; the main thread handles signals, mount changes and the periodic jobs.
public final class Daemon: Sendable {
    public let configuration: DaemonConfiguration
    let group: FanotifyGroup
    let policy: PolicyState
    let statistics = Statistics()
    let eventLog: EventLog
    let learned: LearnRecorder
    let facts: KernelFileFacts
    let kernelCache: KernelVerdictCache
    let marker: FilesystemMarker
    let reader: EventReader
    let hashPool: HashPool
    let prehasher: Prehasher?
    let maintenance: MaintenanceWindows
    let listedPrehash: ListedFilesPrehash
    let hardening: Hardening
    let ownPID = getpid()
    let startedAt = monotonicSeconds()
    let ready = Atomic<Bool>(false)
    let confined = Atomic<Bool>(false)
    let serviceNotifier = ServiceNotifier()
    /// Every fanotify group, and /dev/null opened before any mark exists: at the end of shutdown each group's
    /// descriptor is replaced by /dev/null, so the kernel releases the groups (and allows whatever waits) even if some
    /// thread cannot end (a FUSE request waited out through SIGKILL keeps the process, and a shared descriptor table,
    /// alive). Replaced, not closed: a late write to the number goes nowhere instead of to a file opened since.
    let groupsToRelease: [FanotifyGroup]
    let nullDevice: FileDescriptor?
    /// How often other mount namespaces are looked for (the window in which a filesystem a container mounts is
    /// not yet marked; a mount in the daemon's own namespace is seen at once through mountinfo's POLLPRI).
    static let namespaceScanSeconds = 2.0

    /// `leaseBreakSignals`: a signalfd for SIGIO (made before any thread, so that every thread has it blocked), read
    /// by the lease keeper: a writer breaking one of the daemon's read leases raises it.
    public init(configuration: DaemonConfiguration, hostname: String, leaseBreakSignals: SignalReceiver? = nil) throws(DaemonStartError) {
        keepLargeAllocationsOutOfTheHeap()   // before the policy is loaded: it is the largest allocation
        self.configuration = configuration
        policy = PolicyState(mode: configuration.mode, stateDirectory: configuration.stateDirectory, hostname: hostname)
        policy.setProfileLearning(configuration.learnProfiles)
        eventLog = EventLog(path: configuration.eventsPath, statistics: statistics)
        learned = LearnRecorder(hostname: hostname, statistics: statistics)
        hardening = Hardening(configuration: configuration)
        let log: @Sendable (String) -> Void = { Daemon.log($0) }
        let execCounter: FanotifyGroup?
        do {
            group = try FanotifyGroup.create()
            execCounter = configuration.countExecs ? try? FanotifyGroup.createCounter() : nil
        } catch {
            throw DaemonStartError(description: "cannot create the fanotify group: \(error) (appctl daemon must run as root, on a kernel with CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")
        }
        PermissionRequest.lastResortGroup.store(group.descriptor.rawValue, ordering: .relaxed)
        // Exec events always; open events unless `open-events = no` (they close the loader, library and
        // interpreter bypasses, see Policies/INTERPRETERS.md); close-write events feed the pre-hasher.
        let events: FanotifyGroup.Events = configuration.openEvents ? [.openExecPermission, .openPermission] : [.openExecPermission]
        let closeWriteNotifier = configuration.prehash ? try? FanotifyGroup.createNotifier() : nil
        marker = FilesystemMarker(group: group, execCounter: execCounter, closeWriteNotifier: closeWriteNotifier, events: events,
                                  configuration: configuration, log: log)
        facts = KernelFileFacts(configuredInterpreters: configuration.interpreters, untrustedOwnership: marker.untrustedOwnership)
        // The kernel-side verdict cache needs the metadata watch; a kernel that refuses the group gets no cache.
        let attributeWatch = configuration.kernelCache ? try? FanotifyGroup.createAttributeWatch() : nil
        groupsToRelease = [group] + [execCounter, closeWriteNotifier, attributeWatch].compactMap { $0 }
        nullDevice = try? FileDescriptor.open("/dev/null", [.readWrite])
        if configuration.kernelCache && attributeWatch == nil {
            log("appctl: WARNING: this kernel refused a FAN_REPORT_FID group for FAN_ATTRIB: the kernel-side verdict cache stays off")
        }
        kernelCache = KernelVerdictCache(responder: group, attributeWatch: attributeWatch, enabled: configuration.kernelCache,
                                         watchedEvents: events, statistics: statistics, log: log)
        let caches = DecisionCaches()
        let responder = Responder(responder: group, kernelCache: kernelCache, policy: policy, learned: learned, events: eventLog,
                                  statistics: statistics, logAllows: configuration.logAllows, facts: facts, caches: caches, log: log)
        let leases = LeaseKeeper(statistics: statistics, verdictLimit: configuration.leasedVerdicts, breakSignals: leaseBreakSignals)
        let triage = Triage(policy: policy, caches: caches, facts: facts, statistics: statistics, ownPID: ownPID,
                            kernelCache: configuration.kernelCache, allowMutableCode: configuration.allowMutableCode,
                            rootDataPaths: RootDataPaths(configuration.kernelCacheDataUnder), leases: leases)
        hashPool = HashPool(policy: policy, caches: caches, responder: responder, statistics: statistics, triage: triage, facts: facts,
                            leases: leases, workers: configuration.hashThreads)
        let pool = hashPool
        responder.handOffToWorker = { request, answer in pool.enqueueProfileCheck(request, answer: answer) }
        listedPrehash = ListedFilesPrehash(caches: caches, statistics: statistics, facts: facts)
        let pid = ownPID, counters = statistics
        prehasher = closeWriteNotifier.map { Prehasher(caches: caches, statistics: counters, notifier: $0, ownPID: pid) }
        // Its fanotify group is created here, before confinement forbids fanotify_init. Entries it adds are taken
        // in by re-reading the overlays (no flush: only allows are added); a digest unknown while a window is open
        // first waits for the window's queued notices (a program written and run at once).
        maintenance = MaintenanceWindows(policy: policy, stateDirectory: configuration.stateDirectory, log: { Self.log($0) })
        let windows = maintenance
        // Re-decided whenever a window is open: the window's own thread may just have taken the notice in.
        policy.beforeUnknown = { guard windows.isOpen else { return false }; windows.drain(); return true }
        policy.windowOpen = { windows.isOpen }
        do {
            reader = try EventReader(group: group, triage: triage, responder: responder, hashPool: hashPool, ownPID: ownPID,
                                 statistics: statistics, attributeWatch: attributeWatch, kernelCache: kernelCache)
        } catch {
            throw DaemonStartError(description: "cannot create the event reader's eventfd: \(error)")
        }
    }

    /// Loads the configured policy at start. When it is missing, corrupt, out of scope or expired, the newest
    /// policy this host applied before (its last-known-good copy in the state directory) is enforced instead, and
    /// `status` says so (`policy_source`): a reboot after a policy expired, or a bad file pushed by a channel, must
    /// not leave the host open. Enforce mode refuses to start only when there is neither.
    public func loadInitialPolicy() throws(DaemonStartError) {
        guard let path = configuration.policyDirectory ?? configuration.policyPath, let keyPath = configuration.publicKeyPath else {
            if policy.mode == .enforce { throw DaemonStartError(description: "refusing to start in enforce mode without a valid policy: no --policy and --key") }
            return
        }
        defer { loadInitialOverlays() }
        let refusal: PolicyRefusal
        if policy.mode == .enforce || (try? linkStatus(path)) != nil {
            guard case .failure(let why) = reload(reason: "start-up") else { return }
            refusal = why
        } else {
            refusal = PolicyRefusal("\(path): no such file")
        }
        let fallback = configuration.policyDirectory != nil ? policy.applyLastKnownGoodLayers(keyPath: keyPath, because: refusal)
                                                            : policy.applyLastKnownGood(keyPath: keyPath, because: refusal)
        switch fallback {
        case .success(let header):
            kernelCache.flush(reason: "last-known-good policy")
            policyApplied()
            let recorded = (try? policy.lastAppliedSerial()) ?? nil
            let older = recorded.map { header.serial! < $0 } ?? false
            Self.log("appctl: WARNING: enforcing the last-known-good policy, serial \(header.serial!) (\(header.allowCount) allow, \(header.denyCount) deny), because the configured one was refused: \(refusal)"
                + (older ? ". It is OLDER than serial \(recorded!), the last applied here (whose copy is missing): what that one revoked may run again" : ""))
        case .failure(let none):
            if policy.mode == .enforce {
                throw DaemonStartError(description: "refusing to start in enforce mode without a valid policy: \(refusal) (and \(none))")
            }
        }
    }

    /// Runs until SIGTERM or SIGINT. Returns the process exit code.
    public func run(signals: SignalReceiver, control: ControlServer?) -> Int32 {
        let mountinfo = try? FileDescriptor.open("/proc/self/mountinfo", [.readOnly])
        raiseDescriptorLimit()
        facts.buildInterpretersIfNeeded()   // reads the interpreters' files: before any mark exists
        hardening.apply(for: policy.mode)
        // From the first mark until the event thread runs, nothing may open a file on a marked filesystem
        // (nobody would answer): marking, confining and starting threads open nothing.
        if let mountinfo { marker.updateOwnNamespace(mountinfo: mountinfo) }
        // Threads started below inherit this: on a busy machine the thread that answers must get a CPU before
        // the programs it holds up (measured: p99 of cached execs under a 2-core load). The hash workers lower
        // themselves again. Needs CAP_SYS_NICE, so before confinement drops it.
        setThreadNice(-10)
        if configuration.confine {
            do {
                try Confinement.apply(keeping: ConfinementProfile.keptCapabilities, allowedSyscalls: ConfinementProfile.allowedSyscalls)
                confined.store(true, ordering: .relaxed)
            } catch {
                Self.log("appctl: WARNING: running unconfined: \(error)")
            }
        }
        // Threads start after confinement, so they inherit the reduced capabilities.
        eventLog.start()
        hashPool.start()
        reader.start()
        prehasher?.start()
        maintenance.onAdded { [self] in _ = reloadOverlays(reason: "maintenance window") }
        maintenance.start()
        control?.start(serving: self)
        // Other namespaces' filesystems: after the event thread runs (the scan reads /proc only, but opening
        // anything on a marked filesystem with nobody answering would wait for ever).
        marker.updateOtherNamespaces()
        releaseFreeHeapMemory()
        marker.announce.store(true, ordering: .relaxed)
        ready.store(true, ordering: .releasing)
        // Threads start only after confinement; the pass reads files, so after the event thread answers too.
        if configuration.prehashListed, let path = policy.snapshot.path { listedPrehash.start(policyPath: path) }
        serviceNotifier.notify("READY=1\nSTATUS=enforcing \(policy.mode.rawValue)")
        Self.log("appctl: ready, mode \(policy.mode.rawValue), \(marker.markedCount) filesystems marked")

        let jobs = PeriodicJobs(daemon: self)
        loop: while true {
            var entries: [(FileDescriptor, Int16)] = [(signals.descriptor, Int16(POLLIN))]
            if let mountinfo { entries.append((mountinfo, Int16(POLLPRI))) }
            let revents = (try? pollDescriptors(entries, timeoutMilliseconds: 1000)) ?? []
            if let mountinfo, revents.count > 1, revents[1] & Int16(POLLPRI | POLLERR) != 0 || marker.lookupTimedOut.load(ordering: .relaxed) {
                marker.updateOwnNamespace(mountinfo: mountinfo)
                jobs.runSoon(.namespaceScan)   // a mount in our namespace often comes with mounts in new ones (containers)
            }
            while let signal = signals.next() {
                switch signal {
                case SIGHUP:
                    reload(reason: "SIGHUP")
                    eventLog.reopen()
                case SIGTERM, SIGINT:
                    break loop
                default:
                    break
                }
            }
            jobs.runDue()
        }
        shutdown(control: control)
        return 0
    }

    /// Answers everything pending, writes the learn fragment and the event log, restores what enforcing changed;
    /// the group closes with the process (the kernel allows what may still arrive).
    func shutdown(control: ControlServer?) {
        control?.stop()
        listedPrehash.stop()
        // Files written while the event thread still answers: the state and learn directories may lie on a marked
        // filesystem, and the daemon's own opens of them are permission events too (a second review).
        policy.waitForCopies()   // a last-known-good copy being written is finished, not cut off
        flushLearned()
        reader.stop()
        hashPool.stop()
        prehasher?.stop()
        maintenance.stop()
        hardening.apply(for: .monitor)
        eventLog.stop()
        if let nullDevice {
            for g in groupsToRelease { g.descriptor.replace(with: nullDevice) }
        }
        Self.log("appctl: stopped")
    }

    func flushLearned() {
        guard learned.isDirty else { return }
        do { try learned.write(to: configuration.learnOutput) } catch {
            Self.log("appctl: cannot write the learned fragment: \(error)")
        }
    }

    /// stderr, unbuffered. Event records go through the event log's thread instead: logging never blocks a decision.
    static func log(_ line: String) {
        try? FileDescriptor(rawValue: 2).writeAll(Array((line + "\n").utf8))
    }
}
