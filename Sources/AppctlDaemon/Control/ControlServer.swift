import AppctlCore
import AppctlKernel
import _AppctlShims
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// All the control socket may ask of the daemon. The server knows nothing else of it.
public protocol DaemonControl: Sendable {
    func statusReport() -> StatusReport
    /// The whole mode-switch transaction (refuse enforce without a policy, flush, hardening, log, systemd status).
    func setMode(_ mode: Mode) -> Result<Mode, ControlReply>
    /// Execution profiles learned in monitor mode too, or not.
    func setProfileLearning(_ on: Bool) -> String
    func reload(reason: String) -> Result<PolicyHeader, PolicyRefusal>
    /// Reads the overlay directory again; the reply line, or why the overlays in force stay.
    func reloadOverlays(reason: String) -> Result<String, PolicyRefusal>
    /// Maintenance windows: open, close (the report), or say what is open.
    func maintenanceStart(seconds: UInt64, pid: Int32, paths: [String], reason: String) -> Result<String, PolicyRefusal>
    func maintenanceEnd(id: UInt64?) -> Result<String, PolicyRefusal>
    func maintenanceStatus() -> String
    /// Test hook (`--debug-selftest`): make a call confinement forbids. Nil when the hook is off.
    func forbiddenCallSelfTest(_ call: String) -> String?
}

/// The control socket: one request line per connection, one reply (`ControlRequest`, `ControlReply`). Root
/// peers only: the socket file is mode 0600 in a 0700 directory, and `SO_PEERCRED` is checked as well.
public final class ControlServer: Sendable {
    let listener: UnixListener
    private let shutdown: EventNotifier
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    public init(path: String) throws(Errno) {
        createParentDirectory(of: path, mode: 0o700)
        listener = try UnixListener(path: path, mode: 0o600)
        shutdown = try EventNotifier()
    }

    func start(serving control: any DaemonControl) {
        startThread(name: "appctl-control") { [self] in serve(control) }
    }

    /// Stops accepting and removes the socket file (waits up to 2 s for a request being answered).
    func stop() {
        stopping.store(true, ordering: .relaxed)
        shutdown.signal()
        _ = finished.wait(timeout: .now() + 2)
    }

    private func serve(_ control: any DaemonControl) {
        defer { unlink(listener.path); finished.signal() }
        while !stopping.load(ordering: .relaxed) {
            let revents = (try? pollDescriptors([(listener.descriptor, Int16(POLLIN)), (shutdown.descriptor, Int16(POLLIN))],
                                                timeoutMilliseconds: -1)) ?? [0, 0]
            guard revents[0] & Int16(POLLIN) != 0, let (connection, uid) = try? listener.accept() else { continue }
            defer { connection.close() }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(connection.rawValue, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(connection.rawValue, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let line = readLine(connection)
            let peerPID = Int32(truncatingIfNeeded: appctl_peer_pid(connection.rawValue))
            let reply = uid == 0 ? Self.handle(line, control, peerPID: peerPID) : .error("permission denied: the control socket accepts root only")
            try? connection.writeAll(Array(reply.wire.utf8))
        }
    }

    private func readLine(_ fd: FileDescriptor) -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256)
        while bytes.count < 4096 {
            let n = buffer.withUnsafeMutableBytes { (try? fd.read(into: $0)) ?? 0 }
            if n <= 0 { break }
            bytes += buffer[0..<n]
            if bytes.contains(UInt8(ascii: "\n")) { break }
        }
        return String(decoding: bytes.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self).trimmingSpaces()
    }

    /// `peerPID`: the connecting process (`SO_PEERCRED`); a window is opened only for the process that asks.
    static func handle(_ line: String, _ control: any DaemonControl, peerPID: Int32 = 0) -> ControlReply {
        let request: ControlRequest
        do { request = try ControlRequest(line: line) } catch { return error }
        switch request {
        case .status(let json):
            let report = control.statusReport()
            return .ok(report.ready ? "ready" : "starting", body: json ? report.json : report.text)
        case .setMode(let mode):
            switch control.setMode(mode) {
            case .success(let mode): return .ok("mode \(mode.rawValue)")
            case .failure(let refusal): return refusal
            }
        case .profileLearning(let on):
            return .ok(control.setProfileLearning(on))
        case .reload:
            switch control.reload(reason: "reload over the control socket") {
            case .success(let header): return .ok("applied policy serial \(header.serial!) (\(header.allowCount) allow, \(header.denyCount) deny entries)")
            case .failure(let refusal): return .error("policy not applied, the current one stays: \(refusal)")
            }
        case .reloadOverlays:
            switch control.reloadOverlays(reason: "overlay-reload over the control socket") {
            case .success(let summary): return .ok(summary)
            case .failure(let refusal): return .error("overlays not taken in, the current ones stay: \(refusal)")
            }
        case .maintenanceStart(let seconds, let pid, let paths, let reason):
            guard pid == peerPID else { return .error("no maintenance window: pid \(pid) is not the process asking (\(peerPID))") }
            switch control.maintenanceStart(seconds: seconds, pid: pid, paths: paths, reason: reason) {
            case .success(let line): return .ok(line)
            case .failure(let refusal): return .error("no maintenance window: \(refusal)")
            }
        case .maintenanceEnd(let id):
            switch control.maintenanceEnd(id: id) {
            case .success(let report): return .ok("closed", body: report)
            case .failure(let refusal): return .error(refusal.description)
            }
        case .maintenanceStatus:
            return .ok(control.maintenanceStatus())
        case .debugForbiddenSyscall(let call):
            guard let result = control.forbiddenCallSelfTest(call) else { return .error("unknown command '\(line)'") }
            return .ok(result)
        }
    }
}
