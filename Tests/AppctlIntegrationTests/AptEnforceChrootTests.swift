import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// Issue 11, in enforce mode with the real apt and dpkg: a Debian 12 chroot (debootstrap, from the real archive) on an
/// ext4 image that an enforcing daemon marks — the only filesystem it marks. apt inside the chroot runs the hook;
/// packages from the archive install (maintainer scripts included) and run; a locally built package does not.
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: debootstrap, loop mounts, fanotify"))
struct AptEnforceChrootTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    @Test func aptInstallsSucceedOnAnEnforcedFilesystemAndALocalPackageDoesNot() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        let root = h.dir.file("root")
        try h.mountImage(type: "ext4", at: root, sizeMiB: 1200)
        let env = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"]
        let boot = try run("/usr/sbin/debootstrap", ["--variant=minbase", "bookworm", root, "http://deb.debian.org/debian"], environment: env)
        try #require(boot.status == 0, "debootstrap: \(boot.stdout.suffix(500)) \(boot.stderr.suffix(500))")
        try h.mountProc(at: root + "/proc")
        func inChroot(_ arguments: [String]) throws -> ProcessResult { try run("/usr/sbin/chroot", [root] + arguments, environment: env) }
        let update = try inChroot(["apt-get", "update", "-q"])
        try #require(update.status == 0, "apt-get update in the chroot: \(update.stderr)")

        // The hook program and the libraries it needs, inside the chroot (nothing of the host is mounted there: a
        // bind mount of a host filesystem below the marked path would be marked too).
        let hookDir = root + "/opt/appctl-hook"
        try FileManager.default.createDirectory(atPath: hookDir + "/lib", withIntermediateDirectories: true)
        let hook = (appctlBinary as NSString).deletingLastPathComponent + "/appctl-apt-hook"
        try FileManager.default.copyItem(atPath: hook, toPath: hookDir + "/appctl-apt-hook")
        for line in try run("/usr/bin/ldd", [hook]).stdout.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, fields[1] == "=>", fields[2].hasPrefix("/") else { continue }
            let library = String(fields[2])
            guard !["libc.so.6", "libm.so.6"].contains((library as NSString).lastPathComponent) else { continue }
            // The file, not the symlink the soname often is.
            try FileManager.default.copyItem(atPath: realPath(library) ?? library,
                                             toPath: hookDir + "/lib/" + (library as NSString).lastPathComponent)
        }
        let copied = try FileManager.default.contentsOfDirectory(atPath: hookDir + "/lib")
        try #require(copied.contains("libarchive.so.13"), "libraries copied: \(copied)")
        let check = try inChroot(["/bin/sh", "-c", "LD_LIBRARY_PATH=/opt/appctl-hook/lib /opt/appctl-hook/appctl-apt-hook 2>&1; ls -la /opt/appctl-hook/lib | head -5"])
        #expect(check.stdout.contains("usage: appctl-apt-hook"), "the hook runs in the chroot: \(check.stdout) \(check.stderr)")
        try "#!/bin/sh\nLD_LIBRARY_PATH=/opt/appctl-hook/lib exec /opt/appctl-hook/appctl-apt-hook \"$@\"\n"
            .write(toFile: hookDir + "/hook", atomically: false, encoding: .utf8)
        chmod(hookDir + "/hook", 0o755)
        try FileManager.default.createDirectory(atPath: root + "/etc/appctl", withIntermediateDirectories: true)
        try "mode = enforce\npolicy = /etc/appctl/policy.txt\nkey = /etc/appctl/signing.pub\nsocket = /run/appctl.sock\nstate-dir = /var/lib/appctl\n"
            .write(toFile: root + "/etc/appctl/hook.conf", atomically: false, encoding: .utf8)
        // What `appctl apt-hook install --program /opt/appctl-hook/hook --config /etc/appctl/hook.conf` writes.
        try """
            DPkg::Pre-Install-Pkgs { "/opt/appctl-hook/hook pre-install --config /etc/appctl/hook.conf"; };
            DPkg::Tools::Options::/opt/appctl-hook/hook::Version "3";
            DPkg::Post-Invoke { "/opt/appctl-hook/hook post-invoke --config /etc/appctl/hook.conf"; };

            """.write(toFile: root + "/etc/apt/apt.conf.d/20appctl", atomically: false, encoding: .utf8)
        try "pre-invoke=\"/opt/appctl-hook/hook dpkg-pre-invoke --config /etc/appctl/hook.conf\"\n"
            .write(toFile: root + "/etc/dpkg/dpkg.cfg.d/appctl", atomically: false, encoding: .utf8)
        let local = try AptTrustTests.buildLocalPackage(in: h.dir)
        try FileManager.default.copyItem(atPath: local, toPath: root + "/tmp/local.deb")

        // The chroot learned as it is, signed with its own apt sources in auto mode.
        let inventory = h.dir.file("inventory.txt")
        let learned = try appctl("learn", "--root", root, "--dpkg-admindir", root + "/var/lib/dpkg", "--apt-cache", "none", "--out", inventory)
        try #require(learned.status == 0, "\(learned.stderr)")
        let sources = try appctl("apt-hook", "sources", "--lists", root + "/var/lib/apt/lists").stdout.split(separator: "\n").flatMap { ["--apt-source", String($0)] }
        try #require(!sources.isEmpty)
        try FileManager.default.copyItem(atPath: h.keys.publicPath, toPath: root + "/etc/appctl/signing.pub")
        let signed = try run(appctlBinary, ["policy", "sign", "--key", h.keys.privatePath, "--serial", "1", "--out", root + "/etc/appctl/policy.txt"] + sources + [inventory])
        try #require(signed.status == 0, "\(signed.stderr)")

        // The daemon, enforcing on the image only; its socket and state inside the chroot, where the hook finds them.
        try "memfd-noexec = no\nuserns-restrict = no\n".write(toFile: h.dir.file("chroot.conf"), atomically: false, encoding: .utf8)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: appctlBinary)
        daemon.arguments = ["daemon", "--config", h.dir.file("chroot.conf"), "--mode", "enforce", "--policy", root + "/etc/appctl/policy.txt",
                            "--key", root + "/etc/appctl/signing.pub", "--path", root, "--events", h.dir.file("chroot-events.jsonl"),
                            "--socket", root + "/run/appctl.sock", "--state-dir", root + "/var/lib/appctl", "--learn-out", h.dir.file("chroot-learned.txt")]
        let log = h.dir.file("chroot-daemon.log")
        FileManager.default.createFile(atPath: log, contents: nil)
        daemon.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer {
            kill(daemon.processIdentifier, SIGTERM)
            daemon.waitUntilExit()
        }
        #expect(h.waitUntil(30) { (try? appctl("status", "--socket", root + "/run/appctl.sock").status) == 0 }, "the daemon became ready")

        // Unknown content is denied in the chroot: enforcement is real.
        try "#!/bin/sh\necho unknown-ran\n".write(toFile: root + "/tmp/unknown.sh", atomically: false, encoding: .utf8)
        chmod(root + "/tmp/unknown.sh", 0o755)
        #expect(!(try inChroot(["/tmp/unknown.sh"]).stdout.contains("unknown-ran")), "enforcing: an unknown script does not run")

        // apt-get install from the archive: the hook trusts the packages before dpkg unpacks them; their maintainer
        // scripts and programs run — ca-certificates' postinst runs the package's own new program
        // (update-ca-certificates), figlet's runs update-alternatives.
        let install = try inChroot(["apt-get", "install", "-y", "-q", "--no-install-recommends", "hello", "figlet", "ca-certificates"])
        let daemonLog = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(install.status == 0, "apt-get install in the enforced chroot: \(install.stdout.suffix(1500)) \(install.stderr.suffix(1500)) daemon: \(daemonLog.suffix(1500))")
        #expect(install.stderr.contains("appctl: trusted ") && install.stderr.contains(" verified packages"), "\(install.stderr)")
        #expect(install.stdout.contains("Setting up ca-certificates"), "\(install.stdout.suffix(800))")
        #expect(FileManager.default.fileExists(atPath: root + "/etc/ssl/certs/ca-certificates.crt"), "update-ca-certificates ran under enforcement")
        #expect(try inChroot(["/usr/bin/hello"]).stdout.contains("Hello, world!"))
        #expect(try inChroot(["/usr/bin/figlet", "ok"]).status == 0)

        // A locally built package: dpkg used directly is refused before it installs anything (enforcing, no
        // apt-unverified line), and its program, unpacked by hand, is denied.
        let direct = try inChroot(["dpkg", "-i", "/tmp/local.deb"])
        #expect(direct.status != 0 && direct.stderr.contains("this host refuses them"), "\(direct.stderr)")
        #expect(try inChroot(["dpkg-deb", "-x", "/tmp/local.deb", "/tmp/x"]).status == 0)
        #expect(try inChroot(["/tmp/x/usr/local/bin/appctl-test-local"]).status == 126, "a package signed by nobody brings nothing")
    }
}
