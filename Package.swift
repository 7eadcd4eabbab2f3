// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "appctl",
    products: [
        .executable(name: "appctl", targets: ["appctl"]),
        // What apt runs before and after dpkg (`appctl apt-hook install`); the only binary that links libarchive.
        .executable(name: "appctl-apt-hook", targets: ["AppctlAptHook"]),
    ],
    dependencies: [
        // https://github.com/apple/swift-argument-parser 1.8.2 — the CLI's only package dependency.
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C macros and headers that do not import into Swift (fanotify, seccomp, OpenSSL EVP).
        .target(
            name: "_AppctlShims",
            linkerSettings: [.linkedLibrary("crypto"), .linkedLibrary("seccomp")]
        ),
        // The kernel and library boundary: syscalls, fanotify, seccomp, OpenSSL.
        .target(name: "AppctlKernel", dependencies: ["_AppctlShims"]),
        // The policy language and the rule: the format, the decision, the verdict, the control protocol.
        // Testable without root.
        .target(name: "AppctlCore", dependencies: ["AppctlKernel"]),
        // Learning a host: the scanner and the dpkg database.
        .target(name: "AppctlLearn", dependencies: ["AppctlCore", "AppctlKernel"]),
        // apt's chain of trust (InRelease → Packages → .deb), the hook protocol, the overlay store. Runs Debian's
        // own tools (gpgv, apt-helper, dpkg-deb); links no archive library.
        .target(name: "AppctlPackages", dependencies: ["AppctlCore", "AppctlKernel"]),
        // libarchive (Debian's libarchive-dev), for the apt hook's program only.
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        // libcurl, loaded with dlopen by `appctl sync` only (the daemon shares the binary and never maps it).
        .target(name: "_AppctlHTTP", linkerSettings: [.linkedLibrary("dl")]),
        // Fleet distribution: signed bundles (a timestamp over content-addressed policy files), publish, sync.
        .target(name: "AppctlFleet", dependencies: ["AppctlCore", "AppctlKernel", "_AppctlHTTP"]),
        // The enforcement daemon: a composition root over the event pipeline (Sources/README.md).
        .target(name: "AppctlDaemon", dependencies: ["AppctlCore", "AppctlKernel", "AppctlPackages"]),
        .executableTarget(name: "AppctlAptHook", dependencies: ["AppctlPackages", "AppctlDaemon", "AppctlCore", "AppctlKernel", "CArchive"]),
        .executableTarget(
            name: "appctl",
            dependencies: [
                "AppctlLearn", "AppctlDaemon", "AppctlPackages", "AppctlFleet", "AppctlCore", "AppctlKernel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Scaffolding shared by the test targets: temporary trees, running the built binary, root checks.
        .target(name: "AppctlTestSupport", dependencies: ["AppctlCore", "AppctlKernel"], path: "Tests/Support"),
        .testTarget(name: "AppctlCoreTests", dependencies: ["AppctlCore", "AppctlKernel", "AppctlTestSupport"]),
        // Without root: learn, config, the CLI, hashing, and the daemon's decision ladder with a fake kernel.
        .testTarget(name: "AppctlUnitTests", dependencies: ["AppctlLearn", "AppctlDaemon", "AppctlPackages", "AppctlFleet", "AppctlCore", "AppctlKernel", "AppctlTestSupport"]),
        // Real-kernel tests of the daemon: root, fanotify, tmpfs mounts of their own.
        .testTarget(name: "AppctlIntegrationTests", dependencies: ["AppctlDaemon", "AppctlPackages", "AppctlFleet", "AppctlCore", "AppctlKernel", "AppctlTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
