import AppctlCore
import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// The control socket: one command line per connection, one reply. Root peers only: the socket
/// file is mode 0600 in a 0700 directory, and `SO_PEERCRED` is checked as well.
///
/// Commands: `status [json]` → `ok ready|starting` and the figures; `mode enforce|monitor|learn`; `reload`.
/// Replies start with `ok` or `error`.
public final class ControlServer: Sendable {
    let listener: UnixListener

    public init(path: String) throws(Errno) {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            let directory = String(path[..<slash])
            if mkdir(directory, 0o700) == 0 { chmod(directory, 0o700) }
        }
        listener = try UnixListener(path: path, mode: 0o600)
    }

    func start(daemon: Daemon) {
        startThread(name: "appctl-control") { [self] in serve(daemon) }
    }

    private func serve(_ daemon: Daemon) {
        while !daemon.stopping.load(ordering: .relaxed) {
            let revents = (try? pollDescriptors([(listener.descriptor, Int16(POLLIN)), (daemon.shutdownNotifier.descriptor, Int16(POLLIN))],
                                                timeoutMilliseconds: 1000)) ?? [0, 0]
            guard revents[0] & Int16(POLLIN) != 0, let (connection, uid) = try? listener.accept() else { continue }
            defer { connection.close() }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(connection.rawValue, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(connection.rawValue, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let command = readLine(connection)
            guard uid == 0 else {
                try? connection.writeAll(Array("error permission denied: the control socket accepts root only\n".utf8))
                continue
            }
            let reply = handle(command, daemon)
            try? connection.writeAll(Array((reply + "\n").utf8))
        }
        unlink(listener.path)
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

    func handle(_ command: String, _ daemon: Daemon) -> String {
        let words = command.split(separator: " ").map(String.init)
        switch words.first {
        case "status":
            let status = daemon.status()
            return "ok \(status.ready ? "ready" : "starting")\n" + (words.count > 1 && words[1] == "json" ? status.json : status.text)
        case "mode":
            guard words.count == 2, let mode = Mode(rawValue: words[1]) else { return "error usage: mode enforce|monitor|learn" }
            if mode == .enforce && daemon.policy.snapshot.policy == nil {
                return "error no valid policy is loaded; refusing to enforce (fix the policy, then reload)"
            }
            daemon.policy.setMode(mode)
            daemon.flushKernelCache(reason: "mode \(mode.rawValue)")
            daemon.applyHardening(for: mode)
            daemon.log("appctl: mode switched to \(mode.rawValue) over the control socket")
            daemon.serviceNotifier.notify("STATUS=enforcing \(mode.rawValue)")
            return "ok mode \(mode.rawValue)"
        case "reload":
            switch daemon.reload(reason: "reload over the control socket") {
            case .success(let header): return "ok applied policy serial \(header.serial!) (\(header.allowCount) allow, \(header.denyCount) deny entries)"
            case .failure(let refusal): return "error policy not applied, the current one stays: \(refusal)"
            }
        case "debug-forbidden-syscall" where daemon.configuration.debugSelftest:
            // Test hook (hidden --debug-selftest): make a call the seccomp filter forbids.
            daemon.log("appctl: self-test: calling \(words.count > 1 ? words[1] : "execve"), which confinement forbids")
            if words.count > 1 && words[1] == "socket" {
                _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            } else {
                let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
                _ = execve("/bin/true", argv, argv)
            }
            return "ok self-test call returned: not confined"
        default:
            return "error unknown command '\(command)' (status, mode enforce|monitor|learn, reload)"
        }
    }
}
