import AppctlCore
import AppctlKernel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One line per test: a private tmpfs, a key pair, a signed policy of the given files, and a running
/// `appctl daemon` marking only that tmpfs. `stop()` (call it in `defer`) stops the daemon by its PID
/// and unmounts; nothing of the host is ever marked.
public final class DaemonHarness: @unchecked Sendable {
    public let dir: TemporaryDirectory
    /// The tmpfs the daemon marks. Programs to test go here.
    public let mount: String
    public let keys: TestKeys
    public var socket: String { dir.file("appctl.sock") }
    public var events: String { dir.file("events.jsonl") }
    public var stateDir: String { dir.file("state") }
    public var learnOut: String { dir.file("learned.txt") }
    public var policyPath: String { dir.file("policy.txt") }
    public private(set) var daemonPID: pid_t = 0
    /// Foundation reaps its children itself, so exit status comes from the Process object, not waitpid.
    private var daemonProcess: Process?
    private var daemonOutput: FileHandle?
    private var mounts: [String] = []

    /// Mounts the tmpfs and puts `/usr/bin/true` there as `known` (allowed by `writePolicy` by default).
    public init(label: String = "appctl-it") throws {
        dir = TemporaryDirectory(label)
        chmod(dir.path, 0o755)
        mount = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        keys = try TestKeys(in: dir)
        try mountTmpfs(at: mount)
        try copyExecutable("/usr/bin/true", to: "known")
    }

    public func mountTmpfs(at path: String, size: String = "256m") throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let r = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),mode=0755", "tmpfs", path])
        guard r.status == 0 else { throw HarnessError("mount tmpfs at \(path): \(r.stderr)") }
        mounts.append(path)
    }

    /// Mounts proc at `path` (a chroot's /proc), unmounted by `stop()` before what it is mounted on.
    public func mountProc(at path: String) throws {
        let r = try run("/bin/mount", ["-t", "proc", "proc", path])
        guard r.status == 0 else { throw HarnessError("mount proc at \(path): \(r.stderr)") }
        mounts.append(path)
    }

    /// Makes a filesystem of `type` in an image file of this test's directory and loop-mounts it at `path`
    /// (unmounted by `stop()`, the loop device freed with it).
    public func mountImage(type: String, at path: String, sizeMiB: Int = 128) throws {
        let image = dir.file("\(type).img")
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(sizeMiB) << 20) == 0 else {
            throw HarnessError("cannot create \(image)")
        }
        let mkfs = try run("/sbin/mkfs.\(type)", ["-q", image])
        guard mkfs.status == 0 else { throw HarnessError("mkfs.\(type): \(mkfs.stderr)") }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let r = try run("/bin/mount", ["-t", type, "-o", "loop", image, path])
        guard r.status == 0 else { throw HarnessError("mount \(image) at \(path): \(r.stderr)") }
        mounts.append(path)
    }

    /// Writes a text file (a script, or data) into the tmpfs, mode 0755, and returns its path.
    @discardableResult
    public func writeScript(_ name: String, _ text: String) throws -> String {
        let path = mount + "/" + name
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    /// Copies a program into the tmpfs (mode 0755) and returns its path.
    @discardableResult
    public func copyExecutable(_ source: String, to name: String, appending extra: [UInt8] = []) throws -> String {
        let target = mount + "/" + name
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: source)))
        bytes += extra
        unlink(target)
        FileManager.default.createFile(atPath: target, contents: Data(bytes))
        chmod(target, 0o755)
        return target
    }

    /// An executable that is certainly not in any policy: `true` with a unique byte appended.
    @discardableResult
    public func makeUnknown(_ name: String) throws -> String {
        try copyExecutable("/usr/bin/true", to: name, appending: Array("\n\(name)-\(UUID().uuidString)".utf8))
    }

    /// The file's SHA-256, remembered per path: once the daemon enforces, an unknown ELF file cannot
    /// even be read (by design), so take digests of files that will be allowed later before `start`.
    public func digest(_ path: String) throws -> SHA256Digest {
        if let known = digests[path] { return known }
        guard let digest = SHA256Digest(hex: try sha256sum(path)) else { throw HarnessError("cannot hash \(path)") }
        digests[path] = digest
        sizes[path] = UInt64(try linkStatus(path).st_size)
        return digest
    }
    private var digests: [String: SHA256Digest] = [:]
    private var sizes: [String: UInt64] = [:]

    /// Signs a policy allowing the given files (by content) and blocklisting `deny`.
    public func writePolicy(allow: [String]? = nil, deny: [String] = [], serial: UInt64 = 10, expires: Timestamp? = nil,
                            to path: String? = nil, key: TestKeys? = nil, aptSources: [AptSourceRule] = [],
                            aptUnverified: UnverifiedPackages? = nil) throws {
        let allowPaths = try allow ?? [mount + "/known"]
        var entries: [AllowEntry] = []
        for p in allowPaths {
            // Real sizes: the daemon skips hashing files whose size no allow entry has.
            let size = try sizes[p] ?? UInt64(linkStatus(p).st_size)
            sizes[p] = size
            entries.append(AllowEntry(digest: try digest(p), size: size, kind: .elfExec, origin: .manual, path: Array(p.utf8)))
        }
        let denies = try deny.map { DenyEntry(digest: try digest($0), note: "test blocklist") }
        let signer = key ?? keys
        var header = PolicyHeader(serial: serial, issued: .now, expires: expires, keyID: signer.publicKey.keyID)
        header.aptSources = aptSources.sorted()
        header.aptUnverified = aptUnverified
        try PolicyWriter.write(path: path ?? policyPath, header: header, allows: entries, denies: denies, signingKey: signer.privateKey)
    }

    /// Starts the daemon on the tmpfs and waits until `appctl status` says it is ready.
    /// `config` lines go into the config file after these defaults: the machine-wide sysctls
    /// (vm.memfd_noexec, user.max_user_namespaces) are left alone, because a test that kills an
    /// enforcing daemon could not restore them; the tests of those features turn them on.
    /// `wholeMachine` marks every local filesystem instead of the tmpfs: monitor mode only (the safety rules).
    /// `binary`: another appctl (the installed package's) instead of the one built here.
    public func start(mode: String, extra: [String] = [], config: [String] = [], writeDefaultPolicy: Bool = true,
                      wholeMachine: Bool = false, binary: String = appctlBinary) throws {
        precondition(!wholeMachine || mode == "monitor", "a whole-machine daemon in a test runs in monitor mode only")
        if writeDefaultPolicy && (try? linkStatus(policyPath)) == nil { try writePolicy() }
        let configPath = dir.file("appctl.conf")
        let lines = ["memfd-noexec = no", "userns-restrict = no"] + config
        try (lines.joined(separator: "\n") + "\n").write(toFile: configPath, atomically: false, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["daemon", "--config", configPath, "--mode", mode, "--policy", policyPath, "--key", keys.publicPath,
                             ] + (wholeMachine ? [] : ["--path", mount]) + ["--events", events, "--socket", socket, "--state-dir", stateDir,
                             "--learn-out", learnOut] + extra
        let output = dir.file("daemon-\(daemonStarts).log")
        daemonStarts += 1
        FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        daemonPID = process.processIdentifier
        daemonProcess = process
        daemonOutput = handle
        lastLog = output
        for _ in 0..<200 {
            if try appctl("status", "--socket", socket).status == 0 { return }
            if !process.isRunning {
                daemonPID = 0
                throw HarnessError("daemon exited during start-up: \(daemonLog)")
            }
            usleep(50_000)
        }
        throw HarnessError("daemon not ready after 10 s: \(daemonLog)")
    }

    private var daemonStarts = 0
    private var lastLog: String?
    public var daemonLog: String {
        lastLog.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
    }

    /// Sends a signal to the daemon (by its PID) and, unless `wait` is false, waits for it to exit
    /// (SIGKILL after 10 s). Returns the exit status, or 128 + signal when a signal ended it.
    @discardableResult
    public func signalDaemon(_ signal: Int32, wait: Bool = true) -> Int32? {
        guard daemonPID > 0, let process = daemonProcess else { return nil }
        kill(daemonPID, signal)
        guard wait else { return nil }
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(daemonPID, SIGKILL)
            process.waitUntilExit()
        }
        daemonPID = 0
        daemonProcess = nil
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    /// Runs a program through `sh -c` and returns the shell's exit status (126: permission denied).
    public func exec(_ path: String) throws -> Int32 {
        try run("/bin/sh", ["-c", path]).status
    }

    public func execResult(_ path: String) throws -> ProcessResult {
        try run("/bin/sh", ["-c", path])
    }

    /// The daemon's status as JSON fields (string values).
    public func status() throws -> [String: Any] {
        let r = try appctl("status", "--socket", socket, "--json")
        guard let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw HarnessError("status is not JSON: \(r.stdout) \(r.stderr)")
        }
        return object
    }

    public func eventRecords() -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: events, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// The inodes the daemon's fanotify groups hold ignore marks on (the kernel-side verdicts), with each
    /// mark's ignored mask, as the kernel shows them in /proc/PID/fdinfo (`ino:` and `ignored_mask:` in hex).
    public func kernelIgnoreMarks() -> [UInt64: UInt32] {
        let fdDirectory = "/proc/\(daemonPID)/fdinfo"
        var marks: [UInt64: UInt32] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: fdDirectory)) ?? [] {
            guard let text = try? String(contentsOfFile: fdDirectory + "/" + entry, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where line.hasPrefix("fanotify ino:") {
                var fields: [Substring: Substring] = [:]
                for word in line.split(separator: " ").dropFirst() {
                    let pair = word.split(separator: ":", maxSplits: 1)
                    if pair.count == 2 { fields[pair[0]] = pair[1] }
                }
                guard let ino = fields["ino"].flatMap({ UInt64($0, radix: 16) }),
                      let ignored = fields["ignored_mask"].flatMap({ UInt32($0, radix: 16) }), ignored != 0 else { continue }
                marks[ino, default: 0] |= ignored
            }
        }
        return marks
    }

    /// Waits until `condition` holds (polling), up to `seconds`.
    public func waitUntil(_ seconds: Double = 5, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(20_000)
        }
        return try condition()
    }

    /// Stops the daemon (SIGTERM, then SIGKILL), unmounts everything, removes the directory.
    public func stop() {
        signalDaemon(SIGTERM)
        try? daemonOutput?.close()
        for m in mounts.reversed() {
            if (try? run("/bin/umount", [m]))?.status != 0 { _ = try? run("/bin/umount", ["-l", m]) }
        }
        mounts.removeAll()
        dir.remove()
    }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
