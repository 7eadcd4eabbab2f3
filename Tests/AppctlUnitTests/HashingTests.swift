import AppctlCore
import AppctlLearn
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

@Suite struct HashingTests {
    /// Sizes around the 1 MiB read buffer and the 64-byte SHA-256 block.
    static let sizes = [0, 1, 55, 56, 63, 64, 65, 4095, 4096, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) + 7]

    @Test(arguments: sizes)
    func matchesSha256sum(size: Int) throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        var generator = SystemRandomNumberGenerator()
        try dir.write("f", (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let fd = try FileDescriptor.open(dir.file("f"), [.readOnly])
        defer { fd.close() }
        let result = try FileHasher().hash(fd)
        #expect(result.sha256.hex == (try sha256sum(dir.file("f"))))
        #expect(result.bytesRead == Int64(size))
    }

    @Test func multiGigabyteSparseFile() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let path = dir.file("sparse")
        let fd = try FileDescriptor.open(path, [.readWrite, .create, .truncate])
        defer { fd.close() }
        // 3 GiB + 5 bytes: beyond 2^31 and 2^32 offsets, holes in between, data at both ends.
        try fd.writeAll(Array("head".utf8))
        let size: Int64 = (3 << 30) + 5
        try Array("tail!".utf8).withUnsafeBytes { raw in
            _ = pwrite(fd.rawValue, raw.baseAddress, 5, off_t(size - 5))
        }
        let result = try FileHasher().hash(fd)
        #expect(result.bytesRead == size)
        #expect(result.sha256.hex == (try sha256sum(path)))
    }

    @Test func md5MatchesMd5sum() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        try dir.write("f", String(repeating: "dpkg", count: 100_000))
        let fd = try FileDescriptor.open(dir.file("f"), [.readOnly])
        defer { fd.close() }
        let result = try FileHasher().hash(fd, withMD5: true)
        let md5 = try run("/usr/bin/md5sum", [dir.file("f")]).stdout.prefix(32)
        #expect(hexString(result.md5!) == md5)
    }

    /// A file without fs-verity measures as nil, not as an error, whatever the kernel: ENODATA where the
    /// kernel has fs-verity, ENOTTY or EOPNOTSUPP where it has not (this host). Such files are hashed.
    /// The measurement itself is checked on a kernel with fs-verity by VerityTests.
    @Test func fileWithoutVerityMeasuresAsNil() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        try dir.write("f", "#!/bin/sh\n", mode: 0o755)
        let fd = try FileDescriptor.open(dir.file("f"), [.readOnly])
        defer { fd.close() }
        #expect(try fd.verityDigest() == nil)
        // A descriptor that is not a file at all is an error (EBADF), not "no verity".
        #expect(throws: Errno.self) { try FileDescriptor(rawValue: -1).verityDigest() }
    }
}
