import AppctlKernel

/// One line of /proc/self/mountinfo.
public struct MountEntry: Sendable, Equatable {
    public var mountID: UInt64 = 0     // mountinfo's first field, as statx(STATX_MNT_ID) reports it
    public var device: String          // "major:minor": one per superblock
    public var mountPoint: String
    public var filesystemType: String
}

public enum MountTable {
    /// Filesystem types with nothing to execute or that must never be marked (pseudo filesystems).
    public static let pseudoFilesystemTypes: Set<String> = [
        "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs", "pstore",
        "bpf", "configfs", "fusectl", "hugetlbfs", "autofs", "binfmt_misc", "efivarfs", "selinuxfs", "nsfs",
        "rpc_pipefs", "nfsd",
    ]

    /// Filesystems whose file ownership says nothing about who can change the content: a FUSE server answers every
    /// read itself, and a network filesystem's server (or another client) changes files behind this host's back.
    /// Their files are never "only root can write", whatever their owner and mode say.
    public static func ownershipIsMeaningless(_ type: String) -> Bool {
        type == "fuse" || type == "fuseblk" || type.hasPrefix("fuse.") || type.hasPrefix("nfs") || type == "cifs" || type == "smb3"
            || type == "9p" || type == "ceph" || type == "afs" || type == "virtiofs" || type == "lustre" || type == "glusterfs"
    }

    /// Parses mountinfo (proc(5)): `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`.
    public static func parse(_ text: String) -> [MountEntry] {
        var entries: [MountEntry] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else { continue }
            entries.append(MountEntry(mountID: UInt64(fields[0]) ?? 0, device: String(fields[2]),
                                      mountPoint: unescapeOctal(String(fields[4])), filesystemType: String(fields[dash + 1])))
        }
        return entries
    }

    /// mountinfo escapes space, tab, newline and backslash as `\ooo`.
    static func unescapeOctal(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The mounts whose filesystems should be marked: every non-pseudo filesystem, or with `paths`,
    /// the filesystems mounted at or below those mount points. One entry per superblock.
    public static func selectMarkable(_ mounts: [MountEntry], paths: [String], excludedTypes: [String],
                                      excludedMountPoints: [String]) -> [MountEntry] {
        func under(_ mountPoint: String, _ base: String) -> Bool {
            let base = base.count > 1 && base.hasSuffix("/") ? String(base.dropLast()) : base
            return mountPoint == base || mountPoint.hasPrefix(base == "/" ? "/" : base + "/")
        }
        var seen = Set<String>()
        var selected: [MountEntry] = []
        for m in mounts {
            if pseudoFilesystemTypes.contains(m.filesystemType) || excludedTypes.contains(m.filesystemType) { continue }
            if excludedMountPoints.contains(where: { under(m.mountPoint, $0) }) { continue }
            if !paths.isEmpty && !paths.contains(where: { under(m.mountPoint, $0) }) { continue }
            if seen.insert(m.device).inserted { selected.append(m) }
        }
        return selected
    }
}
