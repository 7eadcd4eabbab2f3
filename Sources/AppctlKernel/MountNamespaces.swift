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

    /// One process per mount namespace other than the caller's, as (namespace, pid). Processes that exit
    /// meanwhile are skipped; a namespace whose every process exits between the listing and its use is
    /// gone, and with it whatever only it mounted.
    public static func others() -> [(namespace: String, pid: String)] {
        guard let own = readLink("/proc/self/ns/mnt"), let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var seen: Set<String> = [own]
        var found: [(String, String)] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            guard let first = name.utf8.first, first >= UInt8(ascii: "1"), first <= UInt8(ascii: "9"),
                  name.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  let ns = namespace(ofProcess: name), seen.insert(ns).inserted else { continue }
            found.append((ns, name))
        }
        return found
    }
}
