import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A sysctl raised while enforcing and put back afterwards. The value found first is also written to
/// the state directory, so that a daemon killed while enforcing (no chance to restore) does not make the
/// raised value permanent: the next start reads the record and restores the real original on exit.
final class SysctlGuard: Sendable {
    let name: String
    let enforcedValue: String
    let why: String
    private let path: String
    private let recordPath: String
    private let stateDirectory: String
    /// The value to restore, while raised.
    private let original = Mutex<String?>(nil)
    /// Why the last attempt to raise it failed.
    let failure = Mutex<String?>(nil)

    /// "name=value" while raised, nil otherwise.
    var active: String? { original.withLock { $0 == nil ? nil : "\(name)=\(enforcedValue)" } }

    init(name: String, enforcedValue: String, stateDirectory: String, why: String) {
        self.name = name
        self.enforcedValue = enforcedValue
        self.why = why
        self.stateDirectory = stateDirectory
        path = "/proc/sys/" + name.split(separator: ".").joined(separator: "/")
        recordPath = stateDirectory + "/" + name + ".orig"
    }

    func engage(log: (String) -> Void) {
        original.withLock { original in
            guard original == nil else { return }
            guard let current = readValue(path) else {
                // Not on this kernel (vm.memfd_noexec is Linux 6.3+; Debian 12 ships 6.1): nothing to raise, and the
                // admin must know that this case is not covered.
                failure.withLock { $0 = "\(name): not available on this kernel" }
                log("appctl: WARNING: \(name) does not exist on this kernel (\(path)); not covered: \(why)")
                return
            }
            // A previous run that died while enforcing left the raised value behind: its record holds the original.
            let recorded = readValue(recordPath)
            let restoreTo = recorded ?? current
            if restoreTo == enforcedValue { return }   // the admin chose this value: nothing to restore
            if current != enforcedValue {
                do throws(Errno) { try writeOrThrow(path, enforcedValue) } catch {
                    failure.withLock { $0 = "\(name): \(error)" }
                    log("appctl: WARNING: cannot set \(name) = \(enforcedValue): \(error)"
                        + (error == .permissionDenied ? " (this root lacks CAP_SYS_RESOURCE, e.g. inside a container)" : "")
                        + "; not covered: \(why)")
                    return
                }
            }
            failure.withLock { $0 = nil }
            if recorded == nil { _ = writeValue(recordPath, restoreTo) }
            original = restoreTo
            log("appctl: \(name) \(restoreTo) -> \(enforcedValue) (\(why))")
        }
    }

    func release(log: (String) -> Void) {
        original.withLock { original in
            guard let value = original else { return }
            do throws(Errno) {
                try writeOrThrow(path, value)
                log("appctl: \(name) restored to \(value)")
                unlink(recordPath)
                failure.withLock { $0 = nil }
            } catch {
                // The record stays in the state directory, so the next start restores the real original.
                failure.withLock { $0 = "\(name): cannot restore \(value): \(error)" }
                log("appctl: WARNING: cannot restore \(name) to \(value): \(error); it stays \(enforcedValue) until the next start")
            }
            original = nil
        }
    }

    private func readValue(_ file: String) -> String? {
        (try? readSmallFile(file, limit: 64)).map {
            String(decoding: $0, as: UTF8.self).trimmingSpaces().split(separator: "\n").first.map(String.init) ?? ""
        }
    }

    private func writeValue(_ file: String, _ value: String) -> Bool {
        (try? writeOrThrow(file, value)) != nil
    }

    private func writeOrThrow(_ file: String, _ value: String) throws(Errno) {
        if file.hasPrefix(stateDirectory) { mkdir(stateDirectory, 0o700) }
        let fd = try FileDescriptor.open(file, [.writeOnly, .create, .truncate], permissions: 0o600)
        defer { fd.close() }
        try fd.writeAll(Array((value + "\n").utf8))
    }
}
