import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 13: the Debian package, installed on this machine with the real dpkg, upgraded, removed and purged; lintian
/// on it. `tools/test` builds it first (`tools/package`, with the release build) and names it in APPCTL_TEST_DEB.
/// Whatever of appctl this machine had in /etc, /var/lib and /var/log is moved aside for the test and put back.
/// Not exercised here: these machines do not run systemd as PID 1 (/run/systemd/system is absent), so the maintainer
/// scripts' systemd branches (daemon-reload, try-restart on upgrade, stop on remove) are skipped by their own guard;
/// the restart gap is measured by doing what try-restart does (SIGTERM, then start the new binary).
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: dpkg -i"))
struct DebianPackageTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    static var deb: String? {
        ProcessInfo.processInfo.environment["APPCTL_TEST_DEB"].flatMap { $0.isEmpty ? nil : $0 }
    }

    @Test(.enabled(if: deb != nil || isCI, "no package built (tools/test builds one with tools/package)"))
    func installUpgradeRemoveAndPurgeTheRealPackage() throws {
        guard let deb = Self.deb, FileManager.default.fileExists(atPath: deb) else {
            Issue.record("APPCTL_TEST_DEB does not name a package: tools/test builds it with tools/package")
            return
        }
        let installed = try run("/usr/bin/dpkg-query", ["-W", "-f=${db:Status-Status}", "appctl"])
        guard installed.stdout != "installed" else {
            Issue.record("appctl is installed on this machine already: the test installs and purges its own")
            return
        }
        let dir = TemporaryDirectory("appctl-deb"); defer { dir.remove() }
        // Move aside what this machine has (a quickstart's keys and policy), put it back whatever happens.
        let kept = ["/etc/appctl", "/var/lib/appctl", "/var/log/appctl"].filter { (try? linkStatus($0)) != nil }
        for path in kept { #expect(rename(path, path + ".before-package-test") == 0) }
        defer {
            _ = try? run("/usr/bin/dpkg", ["--purge", "appctl"])
            for path in kept { _ = try? run("/bin/rm", ["-rf", path]); rename(path + ".before-package-test", path) }
        }

        // Install: nothing starts, the admin is told what to do.
        let install = try run("/usr/bin/dpkg", ["-i", deb])
        #expect(install.status == 0, "\(install.stdout) \(install.stderr)")
        #expect(install.stdout.contains("appctl is installed and not running"), "\(install.stdout)")
        let version = try run("/usr/sbin/appctl", ["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let packaged = try run("/usr/bin/dpkg-query", ["-W", "-f=${Version}", "appctl"]).stdout
        #expect(!version.isEmpty && packaged == version, "appctl --version \(version), package \(packaged)")
        let notRunning = try run("/usr/sbin/appctl", ["status"])
        #expect(notRunning.status == 1 && notRunning.stderr.contains("the daemon is not running"), "\(notRunning.stderr)")

        // Manual pages, completions, units.
        for (section, page) in [("8", "appctl"), ("8", "appctl-status"), ("8", "appctl-policy-sign"), ("5", "appctl.conf"), ("5", "appctl-policy-format")] {
            let found = try run("/usr/bin/man", ["-w", section, page])
            #expect(found.status == 0 && found.stdout.hasPrefix("/usr/share/man/"), "man -w \(page): \(found.stdout) \(found.stderr)")
        }
        let rendered = try run("/usr/bin/man", ["-P", "cat", "appctl-status"], environment: ["MANWIDTH": "80", "PATH": "/usr/bin:/bin"])
        #expect(rendered.stdout.contains("--json"), "the page for appctl status is the parser's own help: \(rendered.stdout.prefix(400))")
        let completion = try run("/bin/bash", ["-c", """
            source /usr/share/bash-completion/completions/appctl
            COMP_WORDS=(appctl st); COMP_CWORD=1; COMP_LINE='appctl st'; COMP_POINT=9
            _appctl appctl st appctl; printf '%s\\n' "${COMPREPLY[@]}"
            """])
        #expect(completion.stdout.split(separator: "\n").contains("status"), "bash completes subcommands: \(completion.stdout) \(completion.stderr)")
        #expect(FileManager.default.fileExists(atPath: "/usr/share/zsh/vendor-completions/_appctl"))
        #expect(FileManager.default.fileExists(atPath: "/usr/share/fish/vendor_completions.d/appctl.fish"))
        let units = ["appctl.service", "appctl-sync.service", "appctl-sync.timer"].map { "/lib/systemd/system/" + $0 }
        let verify = try run("/usr/bin/systemd-analyze", ["verify"] + units)
        #expect(verify.status == 0 && verify.stderr.isEmpty, "\(verify.stderr)")
        #expect(try String(contentsOfFile: units[0], encoding: .utf8).contains("StartLimitIntervalSec=0"))
        #expect(FileManager.default.fileExists(atPath: "/usr/lib/appctl/appctl-apt-hook"))
        #expect(!FileManager.default.fileExists(atPath: "/etc/apt/apt.conf.d/20appctl"), "the apt hook is installed by the admin, not the package")

        // The units an admin enables are recorded for purge (systemctl enable works without a running systemd).
        #expect(try run("/bin/systemctl", ["enable", "appctl.service", "appctl-sync.timer"]).status == 0)

        // The conffile: a local edit survives an upgrade that changes the packaged file too (dpkg keeps the admin's
        // and sets the new one beside it). The upgrade is the same package with a higher version and a changed
        // conffile, unpacked and rebuilt by dpkg-deb.
        let conf = "/etc/appctl/appctl.conf"
        let edited = try String(contentsOfFile: conf, encoding: .utf8) + "# local edit by the package test\n"
        try edited.write(toFile: conf, atomically: true, encoding: .utf8)
        let upgrade = try repack(deb, version: packaged + "+upgrade1", in: dir)
        // A daemon of the installed package enforcing (on its own tmpfs) while the upgrade is installed: an unknown
        // program is denied on every try, before, during and after dpkg replaces the binary it runs from.
        let h = try DaemonHarness(); defer { h.stop() }
        let unknown = try h.makeUnknown("unknown")
        try h.start(mode: "enforce", binary: "/usr/sbin/appctl")
        let results = dir.file("exec-results"), stop = dir.file("stop")
        let loop = Process()
        loop.executableURL = URL(fileURLWithPath: "/bin/sh")
        loop.arguments = ["-c", "while [ ! -e '\(stop)' ]; do '\(unknown)' 2>/dev/null; echo $? >> '\(results)'; done"]
        try loop.run()
        #expect(h.waitUntil(10) { ((try? String(contentsOfFile: results, encoding: .utf8)) ?? "").split(separator: "\n").count >= 5 })
        let upgraded = try run("/usr/bin/dpkg", ["--force-confold", "-i", upgrade])
        #expect(upgraded.status == 0, "\(upgraded.stdout) \(upgraded.stderr)")
        FileManager.default.createFile(atPath: stop, contents: nil)
        loop.waitUntilExit()
        let codes = try String(contentsOfFile: results, encoding: .utf8).split(separator: "\n")
        #expect(codes.count >= 5 && codes.allSatisfy { $0 == "126" }, "every exec during the upgrade was denied: \(Set(codes)) of \(codes.count)")
        // What the unit's try-restart does on a host with systemd: stop the old daemon, start the new binary. The gap
        // is the time from SIGTERM until the new daemon answers; the kernel allows execs only inside it.
        let restartStarted = monotonicSeconds()
        #expect(h.signalDaemon(SIGTERM) == 0)
        try h.start(mode: "enforce", binary: "/usr/sbin/appctl")
        let gap = monotonicSeconds() - restartStarted
        print("DebianPackageTests: restart of an enforcing daemon after the upgrade: \(Int(gap * 1000)) ms from SIGTERM to ready (\(codes.count) execs denied during dpkg -i)")
        #expect(try h.exec(unknown) == 126)
        h.stop()
        #expect(try run("/usr/bin/dpkg-query", ["-W", "-f=${Version}", "appctl"]).stdout == packaged + "+upgrade1")
        #expect(try String(contentsOfFile: conf, encoding: .utf8) == edited, "the admin's edit of the conffile was kept")
        #expect(FileManager.default.fileExists(atPath: conf + ".dpkg-dist"), "the new packaged conffile is set beside it")

        // Remove: the program goes, the configuration stays; purge: nothing of appctl stays.
        #expect(try run("/usr/bin/dpkg", ["-r", "appctl"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: "/usr/sbin/appctl"))
        #expect(FileManager.default.fileExists(atPath: conf), "remove keeps the configuration")
        #expect(try run("/usr/bin/dpkg", ["-P", "appctl"]).status == 0)
        for path in ["/etc/appctl", "/var/lib/appctl", "/var/log/appctl", "/usr/lib/appctl", "/usr/share/doc/appctl", "/etc/logrotate.d/appctl",
                     "/etc/systemd/system/sysinit.target.wants/appctl.service", "/etc/systemd/system/timers.target.wants/appctl-sync.timer",
                     "/etc/systemd/system/appctl.service", "/etc/systemd/system/appctl-sync.timer"] {
            #expect((try? linkStatus(path)) == nil, "\(path) is left after purge")
        }
        #expect(try run("/usr/bin/dpkg-query", ["-W", "-f=${db:Status-Status}", "appctl"]).stdout != "installed")

        // Lintian: no errors; the warnings it has are explained in packaging/debian/lintian-overrides.
        let lintian = try run("/usr/bin/lintian", ["--fail-on", "error,warning", "--tag-display-limit", "0", deb])
        #expect(lintian.status == 0, "lintian: \(lintian.stdout) \(lintian.stderr)")
        #expect(!lintian.stdout.contains("E: ") && !lintian.stdout.contains("W: "), "\(lintian.stdout)")
    }

    /// The same package with another version: unpacked by dpkg-deb, the control file's version changed, rebuilt.
    func repack(_ deb: String, version: String, in dir: TemporaryDirectory) throws -> String {
        let tree = dir.file("tree")
        #expect(try run("/usr/bin/dpkg-deb", ["-R", deb, tree]).status == 0)
        let control = tree + "/DEBIAN/control"
        let text = try String(contentsOfFile: control, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("Version: ") ? "Version: \(version)" : String($0) }.joined(separator: "\n")
        try text.write(toFile: control, atomically: true, encoding: .utf8)
        let conffile = tree + "/etc/appctl/appctl.conf"
        try (try String(contentsOfFile: conffile, encoding: .utf8) + "# changed in version \(version)\n").write(toFile: conffile, atomically: true, encoding: .utf8)
        // The md5sums must describe the files as they now are.
        let sums = try run("/bin/sh", ["-c", "cd '\(tree)' && find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums"])
        #expect(sums.status == 0, "\(sums.stderr)")
        let out = dir.file("appctl-upgrade.deb")
        let built = try run("/usr/bin/dpkg-deb", ["--root-owner-group", "--build", tree, out])
        #expect(built.status == 0, "\(built.stderr)")
        return out
    }
}
