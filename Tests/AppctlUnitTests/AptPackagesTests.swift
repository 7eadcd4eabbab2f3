import AppctlCore
import AppctlKernel
import AppctlPackages
import AppctlTestSupport
import Foundation
import Testing

/// Issue 11: the parts of the apt hook that need no root and no network.
@Suite struct AptPackagesTests {
    @Test func hookProtocolVersion3() throws {
        let text = """
            VERSION 3
            APT::Architecture=amd64
            Dir=/
            Dir::State=var/lib/apt
            Dir::State::lists=lists/
            Dir::Cache=/srv/cache

            hostname 3.23+nmu1 amd64 none = 3.23+nmu1 amd64 none /var/cache/apt/archives/hostname_3.23+nmu1_amd64.deb
            jq - - none < 1.6-2.1+deb12u3 amd64 none /var/cache/apt/archives/jq_1.6-2.1+deb12u3_amd64.deb
            hostname 3.23+nmu1 amd64 none = 3.23+nmu1 amd64 none **CONFIGURE**
            old 1.0 amd64 none > - - none **REMOVE**

            """
        let request = try AptHookRequest(parsing: Array(text.utf8))
        #expect(request.actions.count == 4)
        #expect(request.unpacks.map(\.package) == ["hostname", "jq"])
        #expect(request.unpacks[1].oldVersion == nil && request.unpacks[1].newVersion == "1.6-2.1+deb12u3")
        #expect(request.actions[3].isRemoval)
        #expect(request.directory("Dir::State::lists", default: "?") == "/var/lib/apt/lists/")
        #expect(request.directory("Dir::Cache", default: "?") == "/srv/cache")
        #expect(throws: AptHookError.self) { try AptHookRequest(parsing: Array("VERSION 2\n\n".utf8)) }
    }

    /// gpgv's status lines decide, never its exit code: good signatures count by their primary key, a weak hash
    /// or a signature without VALIDSIG does not, and any BADSIG fails the file.
    @Test func gpgvStatusLines() throws {
        let good = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8", sub = "4CB50190207B4758A3F73A796ED0E7B82643E131"
        let status = """
            [GNUPG:] NEWSIG
            [GNUPG:] GOODSIG 6ED0E7B82643E131 Debian Archive Automatic Signing Key (12/bookworm) <ftpmaster@debian.org>
            [GNUPG:] VALIDSIG \(sub) 2026-07-11 1783765031 0 4 0 1 8 01 \(good)
            [GNUPG:] NEWSIG
            [GNUPG:] GOODSIG 1111111111111111 weak
            [GNUPG:] VALIDSIG 2222222222222222222222222222222222222222 2026-07-11 1783765031 0 4 0 1 2 01 3333333333333333333333333333333333333333
            [GNUPG:] NEWSIG
            [GNUPG:] ERRSIG 4444444444444444 1 8 01 1783765031 9 -
            [GNUPG:] NO_PUBKEY 4444444444444444
            [GNUPG:] NEWSIG
            [GNUPG:] EXPKEYSIG 5555555555555555 expired
            [GNUPG:] VALIDSIG 6666666666666666666666666666666666666666 2026-07-11 1783765031 0 4 0 1 8 01 6666666666666666666666666666666666666666
            """
        #expect(try AptArchive.goodSignersForTesting(status) == [good])
        #expect(throws: ChainFailure.self) { try AptArchive.goodSignersForTesting(status + "\n[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 77 x") }
    }

    @Test func releaseDates() {
        #expect(parseRFC2822Date("Sat, 12 Dec 2026 03:33:28 UTC") == Timestamp(canonical: Array("2026-12-12T03:33:28Z".utf8)))
        #expect(parseRFC2822Date("Sat, 12 Dec 2026 03:33:28 +0200") == nil, "only UTC is read; anything else is refused, not guessed")
        #expect(parseRFC2822Date("12 Dec 2026") == nil)
    }

    @Test func dpkgStatusKeepsOnlyPackagesOnDisk() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        try dir.write("status", """
            Package: jq
            Status: install ok installed
            Architecture: amd64
            Version: 1.6-2.1+deb12u3

            Package: gone
            Status: deinstall ok config-files
            Architecture: amd64
            Version: 1.0

            Package: half
            Status: install reinstreq half-installed
            Architecture: all
            Version: 2.0

            """)
        let status = try DpkgStatus(path: dir.file("status"))
        #expect(status.has(name: "jq", version: "1.6-2.1+deb12u3", architecture: "amd64"))
        #expect(!status.has(name: "jq", version: "1.6-2.1+deb12u1", architecture: "amd64"), "another version is retired")
        #expect(!status.has(name: "gone", version: "1.0", architecture: "amd64"))
        #expect(status.has(name: "half", version: "2.0", architecture: "all"))
    }
}
