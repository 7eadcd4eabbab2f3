import AppctlCore
@testable import AppctlDaemon
import Foundation
import Testing

@Suite struct DaemonConfigurationTests {
    static let policies = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Policies").path

    @Test func shippedExampleParsesToTheDefaults() throws {
        let text = try String(contentsOfFile: Self.policies + "/appctl.conf.example", encoding: .utf8)
        var config = DaemonConfiguration()
        try config.apply(file: "appctl.conf.example", text: text)
        #expect(config == DaemonConfiguration(), "the example documents the defaults")
    }

    @Test func settingsAndErrors() throws {
        var config = DaemonConfiguration()
        try config.apply(file: "c", text: "mode = enforce\npath = /srv\npath = /opt  # comment\nlog-allows = yes\n")
        #expect(config.mode == .enforce)
        #expect(config.paths == ["/srv", "/opt"])
        #expect(config.logAllows)
        for (text, line) in [("mode = strict\n", 1), ("\n\ncolour = blue\n", 3), ("just words\n", 1), ("hash-threads = 0\n", 1)] {
            var c = DaemonConfiguration()
            let error = #expect(throws: DaemonConfiguration.ParseError.self) { try c.apply(file: "c.conf", text: text) }
            #expect(error?.line == line, "\(text)")
            #expect(error?.description.hasPrefix("c.conf:\(line): ") == true)
        }
    }

    static let mountinfo = """
        22 1 0:21 / /proc rw,nosuid - proc proc rw
        23 1 0:22 / /sys rw - sysfs sysfs rw
        24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
        25 24 0:5 / /dev rw - devtmpfs udev rw
        26 25 0:23 / /dev/shm rw - tmpfs tmpfs rw
        27 24 0:24 / /tmp/test\\040dir rw - tmpfs tmpfs rw
        28 27 0:25 / /tmp/test\\040dir/sub rw - tmpfs tmpfs rw
        29 24 8:1 /srv /mnt/bind rw - ext4 /dev/vda rw
        30 24 0:26 / /mnt/nfs rw - nfs4 server:/x rw
        """

    @Test func mountSelection() {
        let mounts = MountTable.parse(Self.mountinfo)
        #expect(mounts.count == 9)
        #expect(mounts[5].mountPoint == "/tmp/test dir")
        let all = MountTable.selectMarkable(mounts, paths: [], excludedTypes: ["nfs4"], excludedMountPoints: [])
        #expect(all.map(\.mountPoint) == ["/", "/dev", "/dev/shm", "/tmp/test dir", "/tmp/test dir/sub"],
                "pseudo filesystems, excluded types and a bind mount of a marked superblock are left out")
        let scoped = MountTable.selectMarkable(mounts, paths: ["/tmp/test dir"], excludedTypes: [], excludedMountPoints: [])
        #expect(scoped.map(\.mountPoint) == ["/tmp/test dir", "/tmp/test dir/sub"])
        let excluded = MountTable.selectMarkable(mounts, paths: [], excludedTypes: [], excludedMountPoints: ["/tmp"])
        #expect(!excluded.contains { $0.mountPoint.hasPrefix("/tmp") })
    }
}
