import AppctlCore
import AppctlDaemon
import AppctlKernel
import AppctlPackages
import ArgumentParser
import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

extension Appctl {
    struct Maintenance: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Planned changes without switching appctl off: a bounded window whose own writes are trusted.",
            discussion: """
                'start' runs COMMAND (default: your shell) in a maintenance window. What that command and its
                children write — executable content only root can change, under the paths the signed policy's
                'maintenance' line allows — is trusted ('overlay:maintenance') from the moment it is written,
                until the policy's keep= time after the window closed, unless a signed policy adopts it
                ('appctl drift' lists it as overlay-only). Everything else stays enforced: a file another process
                drops into the same directory during the window is not trusted.
                The window closes when COMMAND exits, at 'appctl maintenance end', when its time runs out, and
                when the daemon restarts. A report is printed and kept in <state-dir>/maintenance/<id>.txt.
                How: the command runs in a mount namespace of its own, in which each path is a bind mount of
                itself; the daemon watches writes through those mounts only.
                """,
            subcommands: [Start.self, Status.self, End.self]
        )

        struct Start: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Open a window and run COMMAND in it; the window closes when it exits.")

            @Option(name: .customLong("for"), help: ArgumentHelp("How long at most, e.g. 30m or 2h (the policy sets the maximum).", valueName: "duration"))
            var duration: String

            @Option(help: ArgumentHelp("Why (kept in the overlay and the report).", valueName: "text"))
            var reason: String

            @Option(name: .customLong("path"), help: ArgumentHelp("A directory whose new content may be trusted (repeatable; default: the policy's maintenance paths).", valueName: "dir"))
            var paths: [String] = []

            @Option(help: ArgumentHelp("The daemon's configuration (for the policy's maintenance paths).", valueName: "file"))
            var config: String = DaemonConfiguration.defaultPath

            @OptionGroup var control: SocketOption

            @Argument(parsing: .postTerminator, help: ArgumentHelp("The command to run in the window (default: $SHELL).", valueName: "command"))
            var command: [String] = []

            func run() throws {
                guard let seconds = parseDuration(duration), seconds > 0 else { throw ValidationError("--for must be a duration such as 30m or 2h") }
                guard !reason.isEmpty else { throw ValidationError("--reason must say why") }
                var configuration = DaemonConfiguration()
                if let bytes = try? readSmallFile(config, limit: 1 << 20) {
                    do { try configuration.apply(file: config, text: String(decoding: bytes, as: UTF8.self)) } catch { throw CommandFailure("\(error)") }
                }
                let socketPath = control.socket ?? configuration.socketPath
                var windowPaths = paths
                if windowPaths.isEmpty {
                    let (header, problem) = AptHook.policyHeader(configuration.policyPath)
                    guard let rule = header?.maintenance else {
                        throw CommandFailure(problem.map { "cannot read the policy: \($0)" } ?? "the policy allows no maintenance window (no 'maintenance' line)")
                    }
                    windowPaths = rule.paths
                }
                guard !windowPaths.isEmpty else { throw CommandFailure("no path to trust: the policy's maintenance line names none, and no --path was given") }
                for path in windowPaths where !isNormalisedAbsolute(path) || (try? fileStatus(path))?.isDirectory != true {
                    throw CommandFailure("\(path): not an existing absolute directory")
                }
                // A mount namespace of this process's own, whose mounts propagate from the host but not back; each
                // path bind-mounted onto itself: mounts the daemon can tell from the host's.
                guard appctl_unshare_mounts() == 0 else { throw CommandFailure("cannot create a mount namespace: \(Errno.current) (run as root)") }
                guard mount(nil, "/", nil, UInt(MS_REC | MS_SLAVE), nil) == 0 else { throw CommandFailure("cannot make / a slave mount: \(Errno.current)") }
                // MS_REC: what is mounted below a path stays visible (and is not watched: writes there are not trusted).
                for path in windowPaths where mount(path, path, nil, UInt(MS_BIND | MS_REC), nil) != 0 {
                    throw CommandFailure("\(path): cannot bind-mount it for the window: \(Errno.current)")
                }
                let opened = try sendControl(.maintenanceStart(seconds: seconds, pid: getpid(), paths: windowPaths, reason: reason), socket: socketPath)
                print("appctl: maintenance \(opened.head)")
                let id = opened.head.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
                let program = command.isEmpty ? [String(cString: getenv("SHELL") ?? strdup("/bin/sh"))] : command
                let status = runInForeground(program)
                let report: String
                do {
                    report = try sendControl(.maintenanceEnd(id: id), socket: socketPath).body
                } catch {
                    report = "appctl: \(error.message) (closed already?)"
                }
                print(report)
                if status != 0 { throw ExitCode(status) }
            }

            /// Runs the program with this terminal and environment, and waits for it (SIGINT and SIGQUIT go to it,
            /// not to us: the window must be closed afterwards).
            private func runInForeground(_ program: [String]) -> Int32 {
                // Killed or hung up, this process's end closes the window (the daemon watches its pid).
                signal(SIGINT, SIG_IGN); signal(SIGQUIT, SIG_IGN)
                var attributes = posix_spawnattr_t()
                posix_spawnattr_init(&attributes)
                defer { posix_spawnattr_destroy(&attributes) }
                var defaults = sigset_t()
                sigemptyset(&defaults); sigaddset(&defaults, SIGINT); sigaddset(&defaults, SIGQUIT)
                posix_spawnattr_setsigdefault(&attributes, &defaults)
                posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))
                var pid: pid_t = 0
                let argv = program.map { strdup($0) } + [nil]
                defer { argv.forEach { free($0) } }
                let rc = posix_spawnp(&pid, program[0], nil, &attributes, argv, environ)
                guard rc == 0 else {
                    try? FileDescriptor(rawValue: 2).writeAll(Array("appctl: cannot run \(program[0]): \(Errno(rawValue: rc))\n".utf8))
                    return 127
                }
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            }
        }

        struct Status: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Say which window is open, if any.")
            @OptionGroup var control: SocketOption
            func run() throws { print(try sendControl(.maintenanceStatus, socket: control.path).head) }
        }

        struct End: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Close the open window now and print its report.")
            @OptionGroup var control: SocketOption
            @Argument(help: ArgumentHelp("The window to close (default: whichever is open).", valueName: "id"))
            var id: UInt64?
            func run() throws { print(try sendControl(.maintenanceEnd(id: id), socket: control.path).body) }
        }
    }
}
