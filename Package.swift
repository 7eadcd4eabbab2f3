// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "appctl",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "appctl", targets: ["appctl"]),
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
        // Pure logic: digests, the policy format, signing, decisions. Testable without root.
        .target(name: "AppctlCore", dependencies: ["AppctlKernel"]),
        // Host-facing work: the learning scanner, the dpkg database, the enforcement daemon.
        .target(name: "AppctlEngine", dependencies: ["AppctlCore", "AppctlKernel"]),
        .executableTarget(
            name: "appctl",
            dependencies: [
                "AppctlEngine", "AppctlCore", "AppctlKernel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Scaffolding shared by the test targets: temporary trees, running the built binary, root checks.
        .target(name: "AppctlTestSupport", dependencies: ["AppctlCore", "AppctlKernel"], path: "Tests/Support"),
        .testTarget(name: "AppctlCoreTests", dependencies: ["AppctlCore", "AppctlKernel", "AppctlTestSupport"]),
        .testTarget(name: "AppctlEngineTests", dependencies: ["AppctlEngine", "AppctlCore", "AppctlKernel", "AppctlTestSupport"]),
        // Real-kernel tests of the daemon: root, fanotify, tmpfs mounts of their own.
        .testTarget(name: "AppctlDaemonTests", dependencies: ["AppctlEngine", "AppctlCore", "AppctlKernel", "AppctlTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
