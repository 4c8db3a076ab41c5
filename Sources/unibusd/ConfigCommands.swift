import ArgumentParser
import Foundation
import UnibusConfig

/// `unibusd config show`: each effective `run` option and where it came from.
struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Inspect unibusd's configuration.",
        subcommands: [Show.self]
    )

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Print every `run` option's effective value and its source (default, file, environment, flag), secrets shown as their references.",
            discussion: """
            Resolution, later winning: defaults, /etc/unibus/unibusd.json, --config FILE, UNIBUS_* environment variables, flags. \
            Give the same --config and flags as `unibusd run`, after `--` for flags: unibusd config show --config FILE -- --listen 0.0.0.0:4222. \
            With a data directory, settings admins pushed by signed command (which stay above all of these) are listed too.
            """
        )

        @Option(name: .long, help: "The configuration file `unibusd run --config` is given.")
        var config: String?

        @Flag(name: .long, help: "One JSON object: {key: {value, source, reference?, reload}}.")
        var json = false

        @Argument(parsing: .captureForPassthrough, help: "`unibusd run` flags, after --.")
        var runFlags: [String] = []

        func run() async throws {
            var flags = runFlags
            if flags.first == "--" { flags.removeFirst() }
            var commandLine = flags
            if let config { commandLine = ["--config", config] + commandLine }
            let invocation = try RunInvocation.resolve(commandLine: commandLine, configFile: config)
            let values = invocation.effective.configurationValues()
            let commanded = Self.commandedSettings(dataDir: invocation.effective.dataDir)
            var rows: [(key: ConfigurationKey, value: String, source: String, reference: String?)] = []
            for key in Run.configurationKeys {
                let reference = invocation.given.contains(key.flag) ? nil : invocation.layers.values[key.name]?.reference
                var value = values[key.name]?.description ?? ""
                if key.isSecret, let reference { value = "(secret: \(reference))" }
                rows.append((key, value, invocation.source(of: key).description, reference))
            }
            if json {
                var object: [String: [String: String]] = [:]
                for row in rows {
                    var entry = ["value": row.value, "source": row.source, "reload": row.key.reload == .live ? "live" : "restart"]
                    if let reference = row.reference { entry["reference"] = reference }
                    if let command = commanded[row.key.name] { entry["command"] = command }
                    object[row.key.name] = entry
                }
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            if !invocation.files.isEmpty { print("# files read, in order: \(invocation.files.joined(separator: ", "))") }
            let width = rows.map(\.key.name.count).max() ?? 0
            for row in rows {
                let padded = row.key.name.padding(toLength: width, withPad: " ", startingAt: 0)
                let restart = row.key.reload == .restart ? "  [restart to change]" : ""
                let via = row.key.isSecret ? "" : row.reference.map { ", via \($0)" } ?? ""
                print("\(padded)  \(row.value.isEmpty ? "-" : row.value)  (\(row.source)\(via))\(restart)")
                if let command = commanded[row.key.name] { print("\(String(repeating: " ", count: width))  overridden by a signed command: \(command)") }
            }
        }

        /// Runtime settings a signed command set, from the data directory's
        /// control state (they stay above files, environment and flags).
        static func commandedSettings(dataDir: String?) -> [String: String] {
            guard let dataDir, let data = FileManager.default.contents(atPath: dataDir + "/control-state.json"),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let settings = object["settings"] as? [String: [String: Any]] else { return [:] }
            var result: [String: String] = [:]
            for (name, setting) in settings {
                let value = setting["value"].map { "\($0)" } ?? "?"
                let admin = setting["admin"] as? String ?? "?"
                result[name] = "\(value) (version \(setting["version"].map { "\($0)" } ?? "?"), by \(admin))"
            }
            return result
        }
    }
}

/// `unibusd drain`: lame duck for a running node, as SIGUSR2 (what the
/// systemd unit's ExecStop runs), waiting until it has stopped.
struct Drain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Put a running node in lame-duck mode (SIGUSR2) and wait until it has exited."
    )

    @Option(name: .long, help: "The node's process id.")
    var pid: Int32?

    @Option(name: .long, help: "A file holding the node's process id (`unibusd run --pid-file`).")
    var pidFile: String?

    @Option(name: .long, help: "Seconds to wait for the node to exit (cover --lame-duck-grace + --lame-duck-duration + --lame-duck-peer-wait).")
    var timeout: Double = 120

    func run() async throws {
        var target = pid
        if target == nil, let pidFile {
            guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let read = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw CLIFailure("\(pidFile) holds no process id (is the node running with --pid-file \(pidFile)?)")
            }
            target = read
        }
        guard let target, target > 1 else { throw CLIFailure("give --pid PID or --pid-file FILE (a process id above 1)") }
        guard timeout.isFinite, (0...86_400).contains(timeout) else { throw CLIFailure("--timeout must be 0 to 86400 seconds") }
        // SIGUSR2 terminates most programs: a stale pid file must not make
        // drain kill whatever process now has that number.
        if let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(target)/exe"),
           !(executable as NSString).lastPathComponent.hasPrefix("unibusd") {
            throw CLIFailure("process \(target) is \(executable), not unibusd: refusing to signal it (a stale pid file?)")
        }
        guard kill(target, SIGUSR2) == 0 else {
            throw CLIFailure(errno == ESRCH ? "no process \(target): the node is not running" : "cannot signal process \(target): \(String(cString: strerror(errno)))")
        }
        print("lame duck: signalled \(target); waiting up to \(Int(timeout)) s for it to exit")
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if Self.hasExited(target) {
                print("stopped")
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw CLIFailure("process \(target) is still running after \(Int(timeout)) s")
    }

    /// Gone, or a zombie its parent has not reaped yet (it has exited).
    static func hasExited(_ pid: Int32) -> Bool {
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.range(of: ")", options: .backwards) else { return false }
        return stat[close.upperBound...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }
}
