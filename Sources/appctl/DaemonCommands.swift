import AppctlCore
import AppctlDaemon
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

/// Sends one request to the daemon; returns its reply, or throws the daemon's refusal as a one-line failure.
func sendControl(_ request: ControlRequest, socket: String) throws(CommandFailure) -> ControlReply {
    let fd: FileDescriptor
    do { fd = try connectUnix(socket) } catch {
        let hint: String
        switch error {
        case .permissionDenied: hint = " (the control socket is root-only: run as root)"
        case .noSuchFile, Errno(rawValue: ECONNREFUSED):
            hint = " — the daemon is not running. Start it with 'systemctl enable --now appctl' once /etc/appctl/policy.txt (or policy-dir) holds a signed policy: 'appctl key generate --private /root/appctl-signing.key --public /etc/appctl/signing.pub', then 'appctl learn --sign-with /root/appctl-signing.key --serial 1 --out /etc/appctl/policy.txt' makes one from this machine (appctl(8))"
        default: hint = ""
        }
        throw CommandFailure("\(socket): cannot reach the daemon: \(error)\(hint)")
    }
    defer { fd.close() }
    // The daemon may answer (a refusal) and close before reading: keep reading its reply.
    signal(SIGPIPE, SIG_IGN)
    let reply: ControlReply
    do {
        try? fd.writeAll(Array((request.line + "\n").utf8))
        reply = ControlReply(wire: String(decoding: try fd.readAll(limit: 1 << 20), as: UTF8.self))
    } catch {
        throw CommandFailure("\(socket): \(error)")
    }
    if !reply.ok { throw CommandFailure(reply.head) }
    return reply
}

/// The daemon's configuration file: `--config` (which must exist), else the default path when it exists, else the
/// defaults. Shared by the daemon and `sync`, which reads its own settings from the same file.
func loadConfiguration(_ config: String?) throws(CommandFailure) -> DaemonConfiguration {
    var configuration = DaemonConfiguration()
    let configPath = config ?? DaemonConfiguration.defaultPath
    guard config != nil || (try? linkStatus(configPath)) != nil else { return configuration }
    let text: [UInt8]
    do { text = try readSmallFile(configPath, limit: 1 << 20) } catch {
        throw CommandFailure("\(configPath): cannot read config: \(error)")
    }
    do { try configuration.apply(file: configPath, text: String(decoding: text, as: UTF8.self)) } catch {
        throw CommandFailure(error.description)
    }
    return configuration
}

/// The mode the configuration file starts the daemon in (nil when the file cannot be read).
func loadedModeSetting() -> Mode? {
    (try? loadConfiguration(nil))?.mode
}

/// `--mode` and the mode commands take the same words as the config file and the control socket.
extension Mode: ExpressibleByArgument {}

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

        @Option(help: ArgumentHelp("enforce, monitor or learn (default: the config file's, else monitor).", valueName: "mode"))
        var mode: Mode?

        @Option(help: ArgumentHelp("The signed policy.", valueName: "file"))
        var policy: String?

        @Option(help: ArgumentHelp("A policy directory instead of one file: a base and its supplements, each a signed <name>.policy (what 'appctl sync' installs). Overrides --policy.", valueName: "dir"))
        var policyDir: String?

        @Option(help: ArgumentHelp("The public key the policy (with --policy-dir: the base layer) must be signed with.", valueName: "public-key"))
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
            var configuration = try loadConfiguration(config)
            if let mode { configuration.mode = mode }
            if let policy { configuration.policyPath = policy; configuration.policyDirectory = nil }
            if let policyDir { configuration.policyDirectory = policyDir }
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

            // A client that hangs up must not kill the daemon with SIGPIPE. SIGIO comes when a writer breaks one of its
            // read leases: read from a signalfd of its own by the lease keeper's thread (which then checks the leases
            // with F_GETLEASE). The handler only stands in should a thread ever run with it unblocked: SIGIO's default
            // action would end the daemon, and an ignored signal would never reach the signalfd.
            signal(SIGPIPE, SIG_IGN)
            signal(SIGIO) { _ in }
            // Before any thread exists, so that only the signalfds see these.
            let signals: SignalReceiver, leaseBreaks: SignalReceiver
            do {
                signals = try SignalReceiver([SIGTERM, SIGINT, SIGHUP])
                leaseBreaks = try SignalReceiver([SIGIO])
            } catch {
                throw CommandFailure("cannot set up signal handling: \(error)")
            }
            let daemon: AppctlDaemon.Daemon
            do { daemon = try AppctlDaemon.Daemon(configuration: configuration, hostname: hostName(), leaseBreakSignals: leaseBreaks) } catch {
                throw CommandFailure(error.description)
            }
            do { try daemon.loadInitialPolicy() } catch { throw CommandFailure(error.description) }
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
            let reply = try sendControl(.status(json: json), socket: control.path)
            print(reply.body)
            if reply.head != "ready" { throw ExitCode(1) }
        }
    }

    struct Enforce: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Switch the running daemon to enforce mode (unknown programs are denied).",
            discussion: "Refused while no valid policy is loaded. Blocklisted content is denied in every mode.")
        @OptionGroup var control: SocketOption
        func run() throws {
            print(try sendControl(.setMode(.enforce), socket: control.path).head)
            // The switch is the running daemon's: a restart (an upgrade, a reboot) starts in the configured mode.
            if loadedModeSetting() != .enforce {
                printError("appctl: note: the daemon enforces until it restarts; set 'mode = enforce' in \(DaemonConfiguration.defaultPath) to keep it so after a restart, an upgrade or a reboot")
            }
        }
    }

    struct Monitor: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Switch the running daemon to monitor mode (unknown programs run, logged as would-deny).")
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl(.setMode(.monitor), socket: control.path).head) }
    }

    struct LearnMode: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "learn-mode",
            abstract: "Switch the running daemon to learn mode (unknown programs run and are recorded).",
            discussion: """
                What runs and the policy lacks is written to the daemon's learn fragment (learn-out in the config,
                default /var/lib/appctl/learned.txt) every learn-flush-seconds and at exit. Review it, sign it with
                'appctl policy sign', reload, then 'appctl enforce'. ('appctl learn' scans a file tree instead.)
                """)
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl(.setMode(.learn), socket: control.path).head) }
    }

    struct ProfileLearning: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "profile-learning",
            abstract: "Learn execution profiles in monitor mode too: which programs each service and user starts.",
            discussion: """
                Learn mode always learns them. While on, every exec is answered by the daemon (not the kernel's
                cache) and recorded per service (the .service or .scope units of the process's cgroup) and per
                user other than root, with whether an interpreter got inline code (sh -c, python3 -c, perl -e,
                a script on standard input). They go into the learn fragment as profile lines; sign them with
                'appctl policy sign --profiles FRAGMENT [--subject service=NAME.service]'. Lasts until the
                daemon restarts; 'learn-profiles = yes' in the config keeps it on.
                """)
        @Argument(help: ArgumentHelp("on or off", valueName: "on|off"))
        var state: String
        @OptionGroup var control: SocketOption
        func validate() throws {
            guard state == "on" || state == "off" else { throw ValidationError("say on or off, not '\(state)'") }
        }
        func run() throws { print(try sendControl(.profileLearning(state == "on"), socket: control.path).head) }
    }

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make the running daemon re-read and verify its policy.",
            discussion: "On any failure (signature, rollback, expiry, scope) the current policy stays; exit 1 and the reason."
        )
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl(.reload, socket: control.path).head) }
    }

    struct OverlayReload: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "overlay-reload",
            abstract: "Make the running daemon re-read its local overlays (the apt hook does this itself).",
            discussion: "Entries are trusted only as far as the signed policy's apt-source lines allow. A file that cannot be read keeps the overlays in force; exit 1 and the reason."
        )
        @OptionGroup var control: SocketOption
        func run() throws { print(try sendControl(.reloadOverlays, socket: control.path).head) }
    }
}
