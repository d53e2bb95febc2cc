// swift-tools-version:6.0
// The parts of the app that need no UIKit and no onnxruntime (the protocol client, URL resolution, the rounds
// and their visit orders, the result store and the reporting rule), as a package that `swift build` and
// `swift test` compile in Swift 6 language mode (strict concurrency: data races are errors), on macOS or on
// Linux with a Swift 6 toolchain. The app (project.yml) compiles these same files together with DnasAgent/.
import PackageDescription

let package = Package(
    name: "DnasAgentCore",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "DnasAgentCore", targets: ["DnasAgentCore"])],
    targets: [
        .target(name: "DnasAgentCore", path: "DnasAgentCore"),
        // Reads the cases in spec/ (shared with tests/test_ios_specs.py) through #filePath: run from a checkout.
        .testTarget(name: "DnasAgentCoreTests", dependencies: ["DnasAgentCore"], path: "Tests/DnasAgentCoreTests"),
    ]
)
