import AppctlCore
import AppctlKernel
import Synchronization

/// Keeps every wanted filesystem marked: those of the daemon's own mount table (re-read on every mount
/// change), those mounted only inside other mount namespaces (looked for in /proc), and the exec counter's
/// marks beside them. Marks are placed through verified mount points, so a rename or a new mount between
/// reading a mount table and marking cannot redirect a mark.
final class FilesystemMarker: Sendable {
    let group: FanotifyGroup
    /// Counts every exec on the marked filesystems, so that `status` can say how many the kernel answered
    /// (nil if off or refused by the kernel). Filesystems that cannot report file handles are not counted.
    let execCounter: FanotifyGroup?
    /// The pre-hasher's close-write notifications (nil when pre-hashing is off), marked where the permission group is.
    let closeWriteNotifier: FanotifyGroup?
    let events: FanotifyGroup.Events
    let paths: [String]
    let excludedTypes: [String]
    let excludedMountPoints: [String]
    let log: @Sendable (String) -> Void

    /// Marked superblocks ("major:minor") → mount point used to mark them.
    private let marked = Mutex<[String: String]>([:])
    private let failures = Mutex<[String]>([])
    /// Superblocks mounted only in other mount namespaces → where they were marked. Refreshed by every scan.
    private let markedElsewhere = Mutex<[String: String]>([:])
    private let execCountGaps = Mutex<Set<String>>([])
    /// Marked filesystems whose ownership means nothing (`MountTable.ownershipIsMeaningless`), by device number.
    let untrustedOwnership = UntrustedOwnership()
    /// Mount points are looked up without letting a filesystem hold up the main loop.
    let lookup = MountPointLookup()
    /// A mount point's lookup did not finish within its budget at the last marking: mark again (the main loop does,
    /// every second, until it does).
    let lookupTimedOut = Atomic<Bool>(false)
    /// Set once start-up is done: from then on, newly marked filesystems are announced.
    let announce = Atomic<Bool>(false)

    init(group: FanotifyGroup, execCounter: FanotifyGroup?, closeWriteNotifier: FanotifyGroup?, events: FanotifyGroup.Events,
         configuration: DaemonConfiguration, log: @escaping @Sendable (String) -> Void) {
        self.group = group; self.execCounter = execCounter; self.closeWriteNotifier = closeWriteNotifier; self.events = events
        paths = configuration.paths
        excludedTypes = configuration.excludedFilesystemTypes
        excludedMountPoints = configuration.excludedMountPoints
        self.log = log
    }

    var markedMountPoints: [String] { marked.withLock { $0.values.sorted() } }
    var markedCount: Int { marked.withLock { $0.count } }
    var markFailures: [String] { failures.withLock { $0 } }
    var markedInOtherNamespaces: [String] { markedElsewhere.withLock { $0.values.sorted() } }

    private func wanted(_ mounts: [MountEntry]) -> [MountEntry] {
        MountTable.selectMarkable(mounts, paths: paths, excludedTypes: excludedTypes, excludedMountPoints: excludedMountPoints)
    }

    /// Marks every wanted filesystem of the daemon's own mount table (`/proc/self/mountinfo`, already open).
    func updateOwnNamespace(mountinfo: FileDescriptor) {
        var text = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: Int64 = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { (try? mountinfo.read(into: $0, at: offset)) ?? 0 }
            if n <= 0 { break }
            text += buffer[0..<n]
            offset += Int64(n)
        }
        let mounts = MountTable.parse(String(decoding: text, as: UTF8.self))
        let present = Set(mounts.map(\.device))
        var added: [String] = []
        var failed: [String] = []
        var timedOut = false
        // Unmounted filesystems: the kernel dropped their marks with the superblock.
        marked.withLock { marked in for device in marked.keys where !present.contains(device) { marked.removeValue(forKey: device) } }
        // Every wanted filesystem is marked again on every change (adding a mark is idempotent): a device number reused
        // by a new superblock, or a mark that went astray, is put right. No lock is held across a lookup (`status`
        // reads `marked`), and the lookups of one pass share one budget.
        lookup.beginPass()
        for m in wanted(mounts) {
            // Before the mark: from the mark on, events come, and a FUSE server's files must never pass for
            // root-only in between.
            untrustedOwnership.note(m)
            do {
                let pinned = try lookup.pin(m.mountPoint, mountID: m.mountID)
                defer { pinned.close() }
                if try group.markVerifiedFilesystem(pinned: pinned, mountID: m.mountID, device: m.device, events: events) {
                    let isNew = marked.withLock { marked -> Bool in
                        defer { marked[m.device] = m.mountPoint }
                        return marked[m.device] == nil
                    }
                    if isNew { added.append("\(m.mountPoint) (\(m.filesystemType))") }
                    markExecCounter(pinned: pinned, mountID: m.mountID, device: m.device)
                } else {
                    failed.append("\(m.mountPoint) (\(m.filesystemType)): the path no longer leads to mount \(m.mountID) (device \(m.device))")
                }
            } catch where error == .timedOut {
                timedOut = true
                failed.append("\(m.mountPoint) (\(m.filesystemType)): the lookup of its mount point did not finish within \(Int(MountPointLookup.budgetSeconds)) s (a filesystem above it does not answer); retried every second")
            } catch {
                failed.append("\(m.mountPoint) (\(m.filesystemType)): \(error)")
            }
        }
        let before = failures.withLock { old -> Set<String> in defer { old = failed }; return Set(old) }
        lookupTimedOut.store(timedOut, ordering: .relaxed)
        if announce.load(ordering: .relaxed) { for a in added { log("appctl: marked new filesystem \(a)") } }
        // Once per failure, not at every retry.
        for f in failed where !before.contains(f) { log("appctl: cannot mark \(f)") }
    }

    /// Marks the filesystems mounted only inside other mount namespaces: each namespace's mount table is read
    /// from /proc/PID/mountinfo of one of its processes and its mounts reached through /proc/PID/root, each
    /// checked by mount id as in our own namespace (a path that leads elsewhere is not marked; a mark placed on
    /// the wrong superblock could only add coverage). `--path` applies to mount points as named inside each
    /// namespace. Superblocks already marked through our own mount table are skipped.
    func updateOtherNamespaces() {
        lookup.beginPass()
        let ownDevices = marked.withLock { Set($0.keys) }
        var present: [String: String] = [:]
        for (namespace, pid) in MountNamespaces.others() {
            guard let bytes = try? readSmallFile("/proc/\(pid)/mountinfo", limit: 16 << 20) else { continue }
            for m in wanted(MountTable.parse(String(decoding: bytes, as: UTF8.self))) where !ownDevices.contains(m.device) && present[m.device] == nil {
                untrustedOwnership.note(m)   // before the mark, as above
                // "/." and not "/": /proc/PID/root itself is a magic link, which O_NOFOLLOW would refuse.
                let path = "/proc/\(pid)/root" + (m.mountPoint == "/" ? "/." : m.mountPoint)
                guard let pinned = try? lookup.pin(path, mountID: m.mountID) else { continue }
                defer { pinned.close() }
                if (try? group.markVerifiedFilesystem(pinned: pinned, mountID: m.mountID, device: m.device, events: events)) == true {
                    present[m.device] = "\(m.mountPoint) (\(m.filesystemType)) in \(namespace), pid \(pid)"
                    markExecCounter(pinned: pinned, mountID: m.mountID, device: m.device)
                }
            }
        }
        let previous = markedElsewhere.withLock { old -> [String: String] in
            defer { old = present }
            return old
        }
        if announce.load(ordering: .relaxed) {
            for (device, place) in present where previous[device] == nil { log("appctl: marked a filesystem of another mount namespace: \(place)") }
        }
    }

    /// Marks a filesystem for the exec counter too. A filesystem without file handles (FAN_REPORT_FID needs
    /// them) is not counted, and `status` says so instead of under-reporting silently.
    private func markExecCounter(pinned: FileDescriptor, mountID: UInt64, device: String) {
        // The pre-hasher's notifications go with the exec counter's: both only watch where the permission group does.
        if let closeWriteNotifier {
            _ = try? closeWriteNotifier.markVerifiedFilesystem(pinned: pinned, mountID: mountID, device: device, events: [.closeWrite])
        }
        guard let execCounter else { return }
        let counted = (try? execCounter.markVerifiedFilesystem(pinned: pinned, mountID: mountID, device: device, events: [.openExec])) == true
        execCountGaps.withLock { gaps in
            if counted { gaps.remove(device) } else { gaps.insert(device) }
        }
    }

    /// Marked filesystems whose execs the counter cannot see (no file handles).
    var uncountedMountPoints: [String] {
        let gaps = execCountGaps.withLock { $0 }
        let own = marked.withLock { $0 }, others = markedElsewhere.withLock { $0 }
        return gaps.compactMap { own[$0] ?? others[$0] }.sorted()
    }

    /// Adds the execs the counting group saw since the last call (main thread once a second, and `status`).
    func drainExecCounter(into statistics: Statistics) {
        guard let execCounter else { return }
        let (count, overflowed) = execCounter.drainCount(of: .openExec)
        statistics.add(.execsSeen, count)
        if overflowed { statistics.add(.execCountOverflows) }
    }
}

/// The device numbers of marked filesystems whose file ownership means nothing (FUSE, network filesystems). Read
/// on the event thread from a set the marker fills as it marks: no filesystem is asked (`fstatfs` on a FUSE file
/// goes to its server, which may never answer).
final class UntrustedOwnership: Sendable {
    private let devices = Mutex<Set<UInt64>>([])

    func note(_ mount: MountEntry) {
        guard MountTable.ownershipIsMeaningless(mount.filesystemType), let device = Self.deviceNumber(mount.device) else { return }
        devices.withLock { _ = $0.insert(device) }
    }

    func contains(_ device: UInt64) -> Bool { devices.withLock { $0.contains(device) } }

    /// "major:minor" (mountinfo) → the kernel's dev_t encoding, as `stat` reports it.
    static func deviceNumber(_ name: String) -> UInt64? {
        let parts = name.split(separator: ":")
        guard parts.count == 2, let major = UInt64(parts[0]), let minor = UInt64(parts[1]) else { return nil }
        return (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~UInt64(0xff)) << 12) | ((major & ~UInt64(0xfff)) << 32)
    }
}
