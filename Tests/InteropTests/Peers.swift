import Foundation
import Testing

/// Runs the real third-party libraries (vodozemac, python-olm, nkeys, PyNaCl)
/// through `peers/peer.py`. A missing peer fails the test: it never skips.
enum Peer {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// Sends one JSON request to the Python peer and returns its JSON reply.
    static func python(_ request: [String: Any]) throws -> [String: Any] {
        let input = try JSONSerialization.data(withJSONObject: request)
        let script = packageRoot.appendingPathComponent("Tests/InteropTests/peers/peer.py").path
        let (status, output, errors) = try run(["python3", script], input: input)
        guard status == 0 else {
            throw Failure(description: "the Python interop peer failed (exit \(status)): \(errors)")
        }
        guard let reply = try JSONSerialization.jsonObject(with: output) as? [String: Any] else {
            throw Failure(description: "the Python peer replied with something other than a JSON object")
        }
        return reply
    }

    /// The built `unibus` executable (UNIBUS_BIN overrides the default path).
    static var unibusExecutable: String {
        ProcessInfo.processInfo.environment["UNIBUS_BIN"]
            ?? packageRoot.appendingPathComponent(".build/debug/unibus").path
    }

    /// Runs `unibus ARGS` with `stdin`; returns status and standard output.
    static func unibus(_ arguments: [String], stdin: String = "") throws -> (status: Int32, output: String) {
        guard FileManager.default.isExecutableFile(atPath: unibusExecutable) else {
            throw Failure(description: "no unibus executable at \(unibusExecutable): run `swift build` first")
        }
        let (status, output, _) = try run([unibusExecutable] + arguments, input: Data(stdin.utf8))
        return (status, String(decoding: output, as: UTF8.self))
    }

    static func run(_ command: [String], input: Data) throws -> (Int32, Data, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        // Write stdin and drain stderr concurrently, so no pipe fills up and blocks the child.
        let group = DispatchGroup()
        let errorBox = ErrorOutput()
        DispatchQueue.global().async(group: group) {
            stdin.fileHandleForWriting.write(input)
            try? stdin.fileHandleForWriting.close()
        }
        DispatchQueue.global().async(group: group) {
            errorBox.data = stderr.fileHandleForReading.readDataToEndOfFile()
        }
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        group.wait()
        let errorData = errorBox.data
        return (process.terminationStatus, output, String(decoding: errorData, as: UTF8.self))
    }
}

func base64(_ bytes: [UInt8]) -> String {
    Data(bytes).base64EncodedString().replacingOccurrences(of: "=", with: "")
}

/// Stderr collected on another queue; read only after the group finished.
private final class ErrorOutput: @unchecked Sendable {
    var data = Data()
}
