import AppctlCore
import AppctlKernel

/// Machine-wide hardening that holds only while enforcing: vm.memfd_noexec (fanotify cannot see memfds) and
/// user.max_user_namespaces (fanotify cannot see a filesystem mounted in a namespace it has never seen).
final class Hardening: Sendable {
    let guards: [SysctlGuard]

    init(configuration: DaemonConfiguration) {
        var guards: [SysctlGuard] = []
        if configuration.memfdNoexec {
            guards.append(SysctlGuard(name: "vm.memfd_noexec", enforcedValue: "2", stateDirectory: configuration.stateDirectory,
                                      why: "executable memfds refused while enforcing"))
        }
        if configuration.usernsRestrict {
            guards.append(SysctlGuard(name: "user.max_user_namespaces", enforcedValue: "0", stateDirectory: configuration.stateDirectory,
                                      why: "no new user namespaces, so no unmarked filesystems mounted in them, while enforcing"))
        }
        self.guards = guards
    }

    func apply(for mode: Mode) {
        for guardian in guards {
            if mode == .enforce { guardian.engage(log: Daemon.log) } else { guardian.release(log: Daemon.log) }
        }
    }

    /// "name=value" of each sysctl raised now.
    var active: [String] { guards.compactMap(\.active) }
    /// Why each hardening that should hold does not.
    var failures: [String] { guards.compactMap { $0.failure.withLock { $0 } } }
}
