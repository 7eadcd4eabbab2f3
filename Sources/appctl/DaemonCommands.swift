import AppctlCore
import AppctlEngine
import AppctlKernel
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// The control socket option every client command shares.
struct SocketOption: ParsableArguments {
    @Option(help: ArgumentHelp("The daemon's control socket (default: \(DaemonConfiguration().socketPath)).", valueName: "path"))
    var socket: String?

    var path: String { socket ?? DaemonConfiguration().socketPath }
}

/// Sends one command to the daemon; returns the reply's first line and the rest.
func sendControl(_ command: String, socket: String) throws(CommandFailure) -> (head: String, body: String) {
    let fd: FileDescriptor
    do { fd = try connectUnix(socket) } catch {
        throw CommandFailure("\(socket): cannot reach the daemon: \(error)\(error == .permissionDenied ? " (the control socket is root-only)" : "")")
    }
    defer { fd.close() }
    // The daemon may answer (a refusal) and close before reading: keep reading its reply.
    signal(SIGPIPE, SIG_IGN)
    do {
        try? fd.writeAll(Array((command + "\n").utf8))
        let reply = String(decoding: try fd.readAll(limit: 1 << 20), as: UTF8.self)
        let head = String(reply.prefix { $0 != "\n" })
        let body = reply.count > head.count ? String(reply.dropFirst(head.count + 1)) : ""
        if head.hasPrefix("error") { throw CommandFailure(String(head.dropFirst(6))) }
        return (head, body.hasSuffix("\n") ? String(body.dropLast()) : body)
    } catch let failure as CommandFailure {
        throw failure
    } catch {
        throw CommandFailure("\(socket): \(error)")
    }
}

extension Appctl {
    struct Daemon: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the enforcement daemon in the foreground (systemd runs it as a service).",
            discussion: """
                Answers every exec on the marked filesystems from the signed policy:
                  enforce  unknown programs fail with EPERM ("Operation not permitted", shell exit 126)
                  monitor  unknown programs run and are logged as would-deny
                  learn    unknown programs run and are recorded in --learn-out, ready to review and sign
                Blocklisted hashes are denied in every mode. Settings come from --config
                (default \(DaemonConfiguration.defaultPath), if present); flags override it.
                Refuses to start in enforce mode without a valid policy. SIGHUP reloads the policy and
                reopens the event log; SIGTERM answers pending events and exits.
                If the daemon dies, the kernel allows everything (fail-open): run it under systemd with Restart=always.
                """
        )

        @Option(help: ArgumentHelp("Config file (key = value lines).", valueName: "file"))
        var config: String?

        @Option(help: ArgumentHelp("enforce, monitor or learn.", valueName: "mode"))
        var mode: String?

        @Option(help: ArgumentHelp("The signed policy.", valueName: "file"))
        var policy: String?

        @Option(help: ArgumentHelp("The public key the policy must be signed with.", valueName: "public-key"))
        var key: String?

        @Option(name: .customLong("path"), help: ArgumentHelp("Only mark the filesystems of this mount point and those mounted below it later (repeatable).", valueName: "mountpoint"))
        var paths: [String] = []

        @Option(help: ArgumentHelp("Event log (JSON lines).", valueName: "file"))
        var events: String?

        @OptionGroup var control: SocketOption

        @Option(help: ArgumentHelp("Where the last applied serial is kept (anti-rollback).", valueName: "dir"))
        var stateDir: String?

        @Option(help: ArgumentHelp("Learn mode: where the fragment of newly seen files is written.", valueName: "file"))
        var learnOut: String?

        @Flag(help: "Accept a policy whose serial is lower than the last one applied on this host.")
        var allowRollback = false

        @Flag(help: "Also log every allowed exec (verbose).")
        var logAllows = false

        @Flag(help: .hidden)
        var debugSelftest = false

        func run() throws {
            var configuration = DaemonConfiguration()
            let configPath = config ?? DaemonConfiguration.defaultPath
            if config != nil || (try? linkStatus(configPath)) != nil {
                let text: [UInt8]
                do { text = try readSmallFile(configPath, limit: 1 << 20) } catch {
                    throw CommandFailure("\(configPath): cannot read config: \(error)")
                }
                do { try configuration.apply(file: configPath, text: String(decoding: text, as: UTF8.self)) } catch {
                    throw CommandFailure(error.description)
                }
            }
            if let mode {
                guard let m = AppctlCore.Mode(rawValue: mode) else { throw CommandFailure("--mode must be enforce, monitor or learn", exitCode: 2) }
                configuration.mode = m
            }
            if let policy { configuration.policyPath = policy }
            if let key { configuration.publicKeyPath = key }
            if !paths.isEmpty { configuration.paths = paths }
            if let events { configuration.eventsPath = events }
            if let socket = control.socket { configuration.socketPath = socket }
            if let stateDir { configuration.stateDirectory = stateDir }
            if let learnOut { configuration.learnOutput = learnOut }
            if allowRollback { configuration.allowRollback = true }
            if logAllows { configuration.logAllows = true }
            if debugSelftest { configuration.debugSelftest = true }
            for path in configuration.paths where (try? linkStatus(path))?.isDirectory != true {
                throw CommandFailure("--path \(path): not a directory")
            }

            // A client that hangs up must not kill the daemon with SIGPIPE.
            signal(SIGPIPE, SIG_IGN)
            // Before any thread exists, so that only the signalfd sees these.
            let signals: SignalReceiver
            do { signals = try SignalReceiver([SIGTERM, SIGINT, SIGHUP]) } catch {
                throw CommandFailure("cannot set up signal handling: \(error)")
            }
            let daemon: AppctlEngine.Daemon
            do { daemon = try AppctlEngine.Daemon(configuration: configuration, hostname: hostName()) } catch {
                throw CommandFailure(error.description)
            }
            if let policyPath = configuration.policyPath, configuration.publicKeyPath != nil,
               configuration.mode == .enforce || (try? linkStatus(policyPath)) != nil {
                if case .failure(let refusal) = daemon.reload(reason: "start-up"), configuration.mode == .enforce {
                    throw CommandFailure("refusing to start in enforce mode without a valid policy: \(refusal)")
                }
            } else if configuration.mode == .enforce {
                throw CommandFailure("refusing to start in enforce mode without a valid policy: no --policy and --key")
            }
            let server: ControlServer
            do { server = try ControlServer(path: configuration.socketPath) } catch {
                throw CommandFailure("\(configuration.socketPath): cannot create the control socket: \(error)")
            }
            let code = daemon.run(signals: signals, control: server)
            if code != 0 { throw ExitCode(code) }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the running daemon's mode, policy and figures. Exit 0 when it answers and is ready.",
            discussion: """
                Ready means start-up is done: the policy is loaded and every filesystem that could be marked is.
                A filesystem that could not be marked is listed under 'mark failures' (and was reported on the
                daemon's stderr): check that line, it is not covered. Scripts and tests wait on this exit code.
                """
        )

        @OptionGroup var control: SocketOption

        @Flag(help: "Print JSON instead of text.")
        var json = false

        func run() throws {
            let (head, body) = try sendControl(json ? "status json" : "status", socket: control.path)
            print(body)
            if head != "ok ready" { throw ExitCode(1) }
        }
    }

    struct Enforce: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Switch the running daemon to enforce mode (unknown programs are denied).")
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl("mode enforce", socket: control.path).head.dropFirst(3)) }
    }

    struct Monitor: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Switch the running daemon to monitor mode (unknown programs run, logged as would-deny).")
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl("mode monitor", socket: control.path).head.dropFirst(3)) }
    }

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make the running daemon re-read and verify its policy.",
            discussion: "On any failure (signature, rollback, expiry, scope) the current policy stays; exit 1 and the reason."
        )
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl("reload", socket: control.path).head.dropFirst(3)) }
    }
}
