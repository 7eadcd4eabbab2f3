import AppctlCore
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// The overlay directory (`<state-dir>/overlays`, root-only): one `<layer>.overlay` file per layer, rewritten
/// whole and atomically under an exclusive lock on `.lock`, so the apt hook and the daemon's start-up
/// reconciliation never interleave.
public struct OverlayStore: Sendable {
    public var directory: String

    public init(directory: String) { self.directory = directory }

    public init(stateDirectory: String) { self.init(directory: stateDirectory + "/overlays") }

    public func path(of layer: String) -> String { directory + "/" + layer + ".overlay" }

    /// Creates the directory root-only if it is missing, and refuses one anyone else could change.
    public func prepare() throws(OverlayError) {
        let parent = String(directory[..<(directory.lastIndex(of: "/") ?? directory.startIndex)])
        if !parent.isEmpty { mkdir(parent, 0o700) }
        mkdir(directory, 0o700)
        guard let st = try? linkStatus(directory), st.isDirectory, st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
            throw OverlayError("\(directory): must be a directory owned by root and writable only by root")
        }
    }

    /// Runs `body` holding the store's lock. `wait: false` returns nil at once when someone else holds it.
    public func withLock<R>(wait: Bool, _ body: () throws(OverlayError) -> R) throws(OverlayError) -> R? {
        try prepare()
        let lock: FileDescriptor
        do { lock = try FileDescriptor.open(directory + "/.lock", [.readWrite, .create, .noFollow], permissions: 0o600) } catch {
            throw OverlayError("\(directory)/.lock: cannot open: \(error)")
        }
        defer { lock.close() }
        do { try lock.lockExclusively(wait: wait) } catch {
            if error == .wouldBlock { return nil }
            throw OverlayError("\(directory)/.lock: cannot lock: \(error)")
        }
        return try body()
    }

    /// One layer; an empty overlay when its file does not exist yet.
    public func read(layer: String) throws(OverlayError) -> Overlay {
        let path = path(of: layer)
        if (try? linkStatus(path)) == nil { return Overlay(layer: layer, packages: []) }
        let overlay = try Overlay.load(path: path, directory: directory)
        guard overlay.layer == layer else { throw OverlayError("\(path): holds layer '\(overlay.layer)', not '\(layer)'") }
        return overlay
    }

    /// Every layer present, by file name order.
    public func readAll() throws(OverlayError) -> [Overlay] {
        guard (try? linkStatus(directory)) != nil else { return [] }
        var overlays: [Overlay] = []
        let names: [String]
        do { names = try listDirectory(directory) } catch { throw OverlayError("\(directory): cannot list: \(error)") }
        for name in names.sorted() where name.hasSuffix(".overlay") {
            overlays.append(try Overlay.load(path: directory + "/" + name, directory: directory))
        }
        return overlays
    }

    /// Replaces a layer's file: written to a temporary file, synced, renamed (never half a file), mode 0600.
    public func write(_ overlay: Overlay) throws(OverlayError) {
        do { try AtomicFileWriter.write(overlay.serialized(), to: path(of: overlay.layer), permissions: 0o600) } catch {
            throw OverlayError("\(path(of: overlay.layer)): cannot write: \(error)")
        }
    }

    /// Drops the package versions dpkg no longer has installed (or unpacked): an old, vulnerable binary must not
    /// stay runnable from a copy once its package moved on. Returns the labels retired.
    public func retire(layer: String, installed: DpkgStatus) throws(OverlayError) -> [String] {
        var overlay = try read(layer: layer)
        let before = overlay.packages
        overlay.packages = before.filter { installed.has(name: $0.name, version: $0.version, architecture: $0.architecture) }
        let retired = before.filter { !overlay.packages.contains($0) }.map(\.label)
        if !retired.isEmpty { try write(overlay) }
        return retired
    }
}

/// What dpkg's status database says is on the machine: package, architecture → version, for every package whose
/// files are on disk (installed, unpacked, half-configured, awaiting triggers; not config-files or not-installed).
public struct DpkgStatus: Sendable {
    public static let defaultPath = "/var/lib/dpkg/status"
    private var versions: [String: String] = [:]

    public init(path: String = DpkgStatus.defaultPath) throws(OverlayError) {
        let bytes: [UInt8]
        do { bytes = try readSmallFile(path, limit: 512 << 20) } catch { throw OverlayError("\(path): cannot read: \(error)") }
        for paragraph in Deb822.paragraphs(bytes) {
            guard let name = paragraph["Package"], let version = paragraph["Version"], let status = paragraph["Status"] else { continue }
            let state = status.split(separator: " ").last.map(String.init) ?? ""
            guard !["not-installed", "config-files"].contains(state) else { continue }
            versions[name + ":" + (paragraph["Architecture"] ?? "")] = version
        }
    }

    public func has(name: String, version: String, architecture: String) -> Bool {
        versions[name + ":" + architecture] == version
    }

    /// Whether an apt transaction holds dpkg's frontend lock (`lock-frontend`), which it keeps across all its dpkg
    /// runs: between two of them `lock` is free, but the transaction is not over.
    public static func isAptBusy(adminDirectory: String = "/var/lib/dpkg") -> Bool { isBusy(adminDirectory: adminDirectory, lock: "lock-frontend") }

    /// Whether dpkg's database is in use now (a transaction is running): its lock file has a record lock.
    public static func isBusy(adminDirectory: String = "/var/lib/dpkg", lock: String = "lock") -> Bool {
        guard let fd = try? FileDescriptor.open(adminDirectory + "/" + lock, [.readOnly, .nonBlocking, .noFollow]) else { return false }
        defer { fd.close() }
        return fd.isRecordLockedByAnother()
    }
}
