import AppctlCore
import AppctlDaemon
import AppctlKernel
import AppctlPackages
#if canImport(Glibc)
import Glibc
#endif

// appctl-apt-hook — what apt runs (`appctl apt-hook install` writes the configuration that names it):
//   pre-install   DPkg::Pre-Install-Pkgs, protocol version 3 on standard input: verify and derive before dpkg runs
//   post-invoke   DPkg::Post-Invoke: retire package versions dpkg no longer has
// Options: --config FILE (default /etc/appctl/appctl.conf). Exit 1 stops apt (pre-install only).
// A program of its own so that only it links libarchive: the daemon's binary stays as small as it was.

func say(_ line: String) { try? FileDescriptor(rawValue: 2).writeAll(Array((line + "\n").utf8)) }

// Never hang apt: whatever happens below, the hook ends within 15 minutes (SIGALRM's default action ends it; apt
// then stops before dpkg runs, as for any failed Pre-Install-Pkgs command).
alarm(15 * 60)

var arguments = Array(CommandLine.arguments.dropFirst())
var configPath = DaemonConfiguration.defaultPath
if let i = arguments.firstIndex(of: "--config"), i + 1 < arguments.count {
    configPath = arguments[i + 1]
    arguments.removeSubrange(i...(i + 1))
}
// verify-debs [--lists DIR] DEB...: for `appctl learn --apt-cache`; one line per result on standard output.
if arguments.first == "verify-debs" {
    var lists = "/var/lib/apt/lists"
    var debs = Array(arguments.dropFirst())
    if let i = debs.firstIndex(of: "--lists"), i + 1 < debs.count { lists = debs[i + 1]; debs.removeSubrange(i...(i + 1)) }
    for line in AptHook.verifyDebs(debs, archive: AptArchive(listsDirectory: lists), hasher: LibarchiveDebHasher()) { print(line) }
    exit(0)
}
guard arguments.count == 1, ["pre-install", "post-invoke", "dpkg-pre-invoke"].contains(arguments[0]) else {
    say("usage: appctl-apt-hook pre-install|post-invoke|dpkg-pre-invoke [--config FILE]  (run by apt and dpkg; see 'appctl apt-hook install')")
    exit(2)
}
var configuration = DaemonConfiguration()
if let bytes = try? readSmallFile(configPath, limit: 1 << 20) {
    do { try configuration.apply(file: configPath, text: String(decoding: bytes, as: UTF8.self)) } catch {
        say("appctl: \(error); the apt hook cannot tell what this host trusts")
        exit(arguments[0] == "post-invoke" ? 0 : 1)
    }
}
var settings = AptHookSettings(policyPath: configuration.policyPath, socketPath: configuration.socketPath,
                               stateDirectory: configuration.stateDirectory, configuredMode: configuration.mode)
settings.publicKeyPath = configuration.publicKeyPath
// How long the daemon may take to answer (tests shorten it).
if let raw = getenv("APPCTL_APT_HOOK_TIMEOUT"), let timeout = Int(String(cString: raw)), timeout > 0 { settings.daemonTimeoutSeconds = timeout }

// dpkg's status database, for the post-invoke reconciliation (tests and chroots point it elsewhere).
if let raw = getenv("APPCTL_DPKG_STATUS") { settings.dpkgStatusPath = String(cString: raw) }

let outcome: AptHook.Outcome
if arguments[0] == "pre-install" {
    let input: [UInt8]
    do { input = try FileDescriptor(rawValue: 0).readAll(limit: 256 << 20) } catch {
        say("appctl: cannot read what apt sent: \(error)")
        exit(1)
    }
    let request: AptHookRequest
    do { request = try AptHookRequest(parsing: input) } catch {
        say("appctl: \(error)")
        exit(1)
    }
    outcome = AptHook.preInstall(request, settings: settings, hasher: LibarchiveDebHasher())
} else if arguments[0] == "dpkg-pre-invoke" {
    // dpkg sets DPKG_HOOK_ACTION for its hooks; apt sets DPKG_FRONTEND_LOCKED when it runs dpkg.
    let action = getenv("DPKG_HOOK_ACTION").map { String(cString: $0) }
    outcome = AptHook.dpkgPreInvoke(settings: settings, action: action, fromApt: getenv("DPKG_FRONTEND_LOCKED") != nil)
} else {
    outcome = AptHook.postInvoke(settings: settings)
}
for line in outcome.lines { say(line) }
exit(outcome.proceed ? 0 : 1)
