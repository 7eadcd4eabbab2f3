#if canImport(Glibc)
import Glibc
#endif

/// The mount namespaces on the machine, each with one process in it, found through /proc: a filesystem
/// mounted only inside another namespace (a container's private tmpfs) never shows in the daemon's own
/// mount table, but it can be reached, and marked, through `/proc/PID/root`.
public enum MountNamespaces {
    /// The target of `/proc/PID/ns/mnt` ("mnt:[4026531841]"): the namespace's identity.
    public static func namespace(ofProcess pid: String) -> String? {
        readLink("/proc/\(pid)/ns/mnt")
    }

    /// One process per (mount namespace, root directory) other than the caller's own, as (namespace, pid):
    /// a chrooted process's mountinfo leaves out the mounts outside its root, so a namespace is read once per
    /// distinct root its processes have (the root as `readlink` shows it: no filesystem is asked). Processes
    /// that exit meanwhile are skipped.
    public static func others() -> [(namespace: String, pid: String)] {
        guard let ownNamespace = readLink("/proc/self/ns/mnt"), let ownRoot = readLink("/proc/self/root"),
              let names = try? listDirectory("/proc") else { return [] }
        var seen: Set<String> = [ownNamespace + " " + ownRoot]
        var found: [(String, String)] = []
        for name in names {
            guard let first = name.utf8.first, first >= UInt8(ascii: "1"), first <= UInt8(ascii: "9"),
                  name.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  let ns = namespace(ofProcess: name), let root = readLink("/proc/\(name)/root"),
                  seen.insert(ns + " " + root).inserted else { continue }
            found.append((ns, name))
        }
        return found
    }
}
