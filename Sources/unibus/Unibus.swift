import ArgumentParser
import Logging
import UnibusCrypto
#if canImport(Glibc)
@preconcurrency import Glibc
#else
@preconcurrency import Darwin
#endif

/// Entry point: standard output is line-buffered, so every line (a loop's
/// live status, a summary) reaches a pipe or file as it is printed, and
/// SIGPIPE is ignored (a closed pipe is an error to report, not a kill).
@main
struct UnibusMain {
    static func main() async {
        setvbuf(stdout, nil, _IOLBF, 0)
        signal(SIGPIPE, SIG_IGN)
        // The client library logs through swift-log; the CLI's own output
        // is stdout (often parsed), so library records go to stderr, and
        // only when asked for (UNIBUS_LOG_LEVEL=debug|info|notice|warning).
        let level = getenv("UNIBUS_LOG_LEVEL").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .critical
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        await Unibus.main()
    }
}

/// The Unibus admin and operator CLI.
struct Unibus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unibus",
        abstract: "Administer and debug a Unibus message bus.",
        version: UnibusVersion.current,
        subcommands: [ContextCommand.self, UserCommand.self, RoomCommand.self, ClusterCommand.self, NodeCommand.self, CommandCenterCommand.self, AgentCommand.self, RootCommand.self, RoleCommand.self, LoginCommand.self, LogCommand.self, IdentityCommand.self, CheckCommand.self, SendCommand.self, HistoryCommand.self, DemoCommand.self, DebugCommand.self]
    )
}

/// Errors the CLI reports as `error: MESSAGE` with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Reads standard input line by line (without the newline), bytes as they are.
func standardInputLines() -> AnySequence<[UInt8]> {
    AnySequence {
        AnyIterator {
            guard let line = readLine(strippingNewline: true) else { return nil }
            return Array(line.utf8)
        }
    }
}
