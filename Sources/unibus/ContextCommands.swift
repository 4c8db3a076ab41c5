import ArgumentParser
import Foundation
import UnibusCrypto

/// A named set of connection defaults, as the nats CLI's contexts: node
/// URLs, data-plane seeds, the CA, the pinned root admin and the path of
/// the identity file (never key material: the identity stays where it is).
/// Flags given on the command line win over the context.
struct CLIContext: Codable, Equatable {
    var nodes: [String] = []
    var servers: [String] = []
    var ca: String?
    var root: String?
    var identity: String?

    /// `$XDG_CONFIG_HOME/unibus` or `~/.config/unibus`.
    static var directory: String {
        let environment = ProcessInfo.processInfo.environment
        if let xdg = environment["XDG_CONFIG_HOME"], xdg.hasPrefix("/") { return xdg + "/unibus" }
        return (environment["HOME"] ?? NSHomeDirectory()) + "/.config/unibus"
    }

    static func path(of name: String) -> String { directory + "/contexts/\(name).json" }
    static var selectionPath: String { directory + "/context" }

    /// The context in force: `UNIBUS_CONTEXT`, else the one `context use`
    /// chose, else none. Loaded once; a broken one is reported by
    /// `validate()` of the commands that would use it.
    static let selected: Result<(name: String, context: CLIContext)?, CLIError> = {
        let chosen = ProcessInfo.processInfo.environment["UNIBUS_CONTEXT"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (try? String(contentsOfFile: selectionPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let name = chosen, !name.isEmpty else { return .success(nil) }
        do {
            return .success((name, try load(name)))
        } catch let error as CLIError {
            return .failure(error)
        } catch {
            return .failure(CLIError("\(error)"))
        }
    }()

    static var current: CLIContext? { (try? selected.get())?.context }

    /// Fails with the reason a selected context cannot be used.
    static func check() throws {
        if case .failure(let error) = selected { throw error }
    }

    static func validName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && name.utf8.allSatisfy { $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")
            || (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) } && !name.hasPrefix(".")
    }

    static func load(_ name: String) throws -> CLIContext {
        guard validName(name) else { throw CLIError("context names are 1 to 64 of A-Z a-z 0-9 . _ -, got \"\(name.prefix(64))\"") }
        let path = path(of: name)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError("no context \"\(name)\" (\(path)); `unibus context ls` lists them, `unibus context add \(name) …` makes it")
        }
        guard data.count <= 64 << 10, let context = try? JSONDecoder().decode(CLIContext.self, from: data) else {
            throw CLIError("\(path) is not a context this CLI wrote; remove it with `unibus context rm \(name)` and add it again")
        }
        return context
    }

    func save(as name: String) throws {
        try FileManager.default.createDirectory(atPath: Self.directory + "/contexts", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try SecretFile.write(Array(try encoder.encode(self)) + [0x0a], to: Self.path(of: name), overwrite: true)
        } catch {
            throw CLIError("cannot write \(Self.path(of: name)): \(error)")
        }
    }
}

/// `unibus context add|use|ls|show|rm`.
struct ContextCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "context",
        abstract: "Named connection defaults (node URLs, seeds, CA, root admin, identity path) so commands need no --node --ca --root --identity.",
        discussion: "Stored in $XDG_CONFIG_HOME/unibus or ~/.config/unibus (0700/0600). Flags on a command win over its context; UNIBUS_CONTEXT=NAME picks one for a single command.",
        subcommands: [Add.self, Use.self, List.self, Show.self, Remove.self]
    )

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add", abstract: "Save (or replace) a context.")
        @Argument(help: "The context's name.") var name: String
        @Option(name: .long, help: "A control-plane URL, https://HOST:PORT (repeat: the seed list).") var node: [String] = []
        @Option(name: .long, help: "A data-plane seed, tls://HOST:PORT (repeat).") var server: [String] = []
        @Option(name: .long, help: "The CA certificate the nodes' certificates chain to.") var ca: String?
        @Option(name: .long, help: "The cluster's root admin (U… nkey) to pin.") var root: String?
        @Option(name: .long, help: "The path of your identity file (the path is stored, never the key).") var identity: String?
        @Flag(name: .long, help: "Also make it the current context.") var use = false

        func run() async throws {
            guard CLIContext.validName(name) else { throw CLIError("context names are 1 to 64 of A-Z a-z 0-9 . _ -, got \"\(name.prefix(64))\"") }
            for url in node where !(url.hasPrefix("https://") || url.hasPrefix("http://127.") || url.hasPrefix("http://localhost")) {
                throw CLIError("--node \(url): give https://HOST:PORT (plain http only on loopback)")
            }
            for url in server where !(url.hasPrefix("tls://") || url.hasPrefix("nats://")) {
                throw CLIError("--server \(url): give tls://HOST:PORT (or nats:// on loopback)")
            }
            if let root, (try? NKey.decodePublicKey(root, expecting: .user)) == nil {
                throw CLIError("--root must be the root admin's user nkey (U…), got \(root.prefix(60))")
            }
            func absolute(_ path: String?, _ option: String) throws -> String? {
                guard let path else { return nil }
                let full = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
                guard FileManager.default.fileExists(atPath: full) else { throw CLIError("\(option) \(full): no such file") }
                return full
            }
            let context = CLIContext(nodes: node, servers: server, ca: try absolute(ca, "--ca"), root: root,
                                     identity: try absolute(identity, "--identity"))
            try context.save(as: name)
            print("saved context \(name) (\(CLIContext.path(of: name)))")
            if use { try Use.select(name) }
        }
    }

    struct Use: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "use", abstract: "Make a context the current one.")
        @Argument(help: "The context's name.") var name: String

        func run() async throws { try Self.select(name) }

        static func select(_ name: String) throws {
            _ = try CLIContext.load(name)
            do {
                try SecretFile.write(Array((name + "\n").utf8), to: CLIContext.selectionPath, overwrite: true)
            } catch {
                throw CLIError("cannot write \(CLIContext.selectionPath): \(error)")
            }
            print("using context \(name)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the contexts; * marks the current one.")

        func run() async throws {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: CLIContext.directory + "/contexts")) ?? [])
                .filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
            guard !names.isEmpty else {
                print("no contexts; add one with `unibus context add NAME --node URL --ca FILE --root NKEY --identity FILE --use`")
                return
            }
            let current = (try? CLIContext.selected.get())??.name
            for name in names {
                let marker = name == current ? "*" : " "
                if let context = try? CLIContext.load(name) {
                    print("\(marker) \(name)  nodes=\(context.nodes.joined(separator: ",").nonEmpty ?? "-") servers=\(context.servers.joined(separator: ",").nonEmpty ?? "-") "
                          + "root=\(context.root ?? "-") identity=\(context.identity ?? "-") ca=\(context.ca ?? "-")")
                } else {
                    print("\(marker) \(name)  (unreadable)")
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Print a context (default: the current one) as JSON.")
        @Argument(help: "The context's name.") var name: String?

        func run() async throws {
            let selected = try CLIContext.selected.get()
            guard let name = name ?? selected?.name else { throw CLIError("no current context; `unibus context use NAME`") }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(try CLIContext.load(name)), as: UTF8.self))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete a context.")
        @Argument(help: "The context's name.") var name: String

        func run() async throws {
            guard CLIContext.validName(name), FileManager.default.fileExists(atPath: CLIContext.path(of: name)) else { throw CLIError("no context \"\(name)\"") }
            try FileManager.default.removeItem(atPath: CLIContext.path(of: name))
            print("removed context \(name)")
        }
    }
}

private extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
