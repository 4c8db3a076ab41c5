import ArgumentParser
import UnibusCrypto

/// The Unibus admin and operator CLI.
@main
struct Unibus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unibus",
        abstract: "Administer and debug a Unibus message bus.",
        version: UnibusVersion.current,
        subcommands: [UserCommand.self, RoomCommand.self, IdentityCommand.self, CheckCommand.self, DemoCommand.self, DebugCommand.self]
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
